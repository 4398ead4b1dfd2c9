import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# Tiny tensors: one thread avoids intra-op spin-waits that make small ops ~1000x slower on a busy 2-core box.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fixed_global_seed():
    """Each test starts from the same global random state, so a test's unseeded draws do not depend on
    which tests ran before it (``-k``, a single file, another order)."""
    torch.manual_seed(0)


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(123)
    return torch.randint(3, 96, (2, 12), generator=g)
