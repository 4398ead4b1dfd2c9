import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tokens():
    g = torch.Generator().manual_seed(123)
    return torch.randint(3, 96, (2, 12), generator=g)
