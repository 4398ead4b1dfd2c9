"""Third-party internals behind ``romer_aihwkit.compat``: each works on the supported versions and fails
loudly (``LibraryChangedError`` naming the library version and the internal) when the internal is gone."""

from __future__ import annotations

import importlib

import pytest
import torch
from tiny_models import tiny_model
from torch import nn

from romer_aihwkit.compat import transformers as tc
from romer_aihwkit.errors import LibraryChangedError, UserError


def _loud(excinfo: pytest.ExceptionInfo, library: str, internal: str) -> None:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, UserError)
    assert message.startswith(f"{library} ") and " changed " in message, message
    assert internal in message and "install a supported version" in message, message


# ---------------------------------------------------------------------------------------------- transformers
def test_router_logits_hooks_record_the_given_routers():
    model = tiny_model("olmoe")
    routers = [nn.Linear(4, 2), nn.Linear(4, 2)]
    assert tc.install_router_logits_hooks(model, routers) == 2
    assert tc.install_router_logits_hooks(nn.Sequential(nn.Linear(2, 2)), routers) == 0  # records nothing


def test_router_logits_hooks_refuse_a_missing_internal(monkeypatch):
    import transformers.utils.output_capturing as capturing

    monkeypatch.delattr(capturing, "install_output_capuring_hook")
    with pytest.raises(LibraryChangedError) as excinfo:
        tc.install_router_logits_hooks(tiny_model("olmoe"), [nn.Linear(4, 2)])
    _loud(excinfo, "transformers", "output_capturing.install_output_capuring_hook")


def test_router_logits_hooks_refuse_a_model_without_its_record_table(monkeypatch):
    from transformers import PreTrainedModel

    model = tiny_model("olmoe")
    for cls in type(model).__mro__:
        if "_can_record_outputs" in vars(cls):
            monkeypatch.delattr(cls, "_can_record_outputs")
    assert isinstance(model, PreTrainedModel)
    with pytest.raises(LibraryChangedError) as excinfo:
        tc.install_router_logits_hooks(model, [nn.Linear(4, 2)])
    _loud(excinfo, "transformers", "PreTrainedModel._can_record_outputs")


def test_capturing_hooks_refuse_a_missing_internal(monkeypatch):
    import transformers.utils.output_capturing as capturing

    tc.install_capturing_hooks(tiny_model("olmoe"))
    monkeypatch.delattr(capturing, "maybe_install_capturing_hooks")
    with pytest.raises(LibraryChangedError) as excinfo:
        tc.install_capturing_hooks(tiny_model("olmoe"))
    _loud(excinfo, "transformers", "maybe_install_capturing_hooks")


def test_checkpoint_layout_internals(monkeypatch):
    import transformers.core_model_loading as loading

    model = tiny_model("olmoe")
    native = model.state_dict()
    saved = tc.saved_layout(model, native)
    assert saved and saved.keys() != native.keys()  # olmoe's fused experts are saved per expert
    assert tc.tied_weight_keys(model) == set(model.all_tied_weights_keys)
    assert tc.ignored_missing_keys(model) == list(model._keys_to_ignore_on_load_missing or [])

    monkeypatch.delattr(loading, "revert_weight_conversion")
    with pytest.raises(LibraryChangedError) as excinfo:
        tc.saved_layout(model, native)
    _loud(excinfo, "transformers", "core_model_loading.revert_weight_conversion")
    monkeypatch.undo()

    monkeypatch.delattr(model, "all_tied_weights_keys")
    with pytest.raises(LibraryChangedError) as excinfo:
        tc.tied_weight_keys(model)
    _loud(excinfo, "transformers", "all_tied_weights_keys")


def test_model_folder_check_is_loud_when_the_layout_internal_is_gone(monkeypatch):
    import transformers.core_model_loading as loading

    from romer_aihwkit.models import MODELS_DIR, check_model_folder

    monkeypatch.delattr(loading, "revert_weight_conversion")
    with pytest.raises(LibraryChangedError) as excinfo:
        check_model_folder(MODELS_DIR / "olmoe-tiny", torch.float32)
    _loud(excinfo, "transformers", "revert_weight_conversion")


def test_custom_gate_detection(monkeypatch):
    import transformers.integrations.moe as moe

    class Plain(nn.Module):
        pass

    class Custom(nn.Module):
        def _apply_gate(self, x):  # pragma: no cover - never called
            return x

    assert not tc.has_custom_gate(Plain()) and tc.has_custom_gate(Custom())
    monkeypatch.delattr(moe, "_default_apply_gate")
    with pytest.raises(LibraryChangedError) as excinfo:
        tc.has_custom_gate(Plain())
    _loud(excinfo, "transformers", "integrations.moe._default_apply_gate")


# ---------------------------------------------------------------------------------------------- lm-eval
@pytest.fixture
def lm_compat():
    pytest.importorskip("lm_eval")
    from romer_aihwkit.compat import lm_eval as compat

    return compat


def test_quiet_patches_and_restores(lm_compat):
    evaluator = importlib.import_module("lm_eval.evaluator")
    task = importlib.import_module("lm_eval.api.task")
    real_env, real_tqdm = evaluator.add_env_info, task.tqdm
    with lm_compat.quiet():
        assert evaluator.add_env_info is not real_env and evaluator.add_env_info() is None
        assert task.tqdm is not real_tqdm
    assert evaluator.add_env_info is real_env and task.tqdm is real_tqdm


@pytest.mark.parametrize(("module", "name"), [("lm_eval.evaluator", "get_git_commit_hash"),
                                              ("lm_eval.api.model", "tqdm")])
def test_quiet_refuses_a_missing_internal(lm_compat, monkeypatch, module, name):
    monkeypatch.delattr(importlib.import_module(module), name)
    with lm_compat.quiet(False):  # not asked to be quiet: nothing is touched
        pass
    with pytest.raises(LibraryChangedError) as excinfo:
        with lm_compat.quiet():
            pass  # pragma: no cover
    _loud(excinfo, "lm-eval", f"{module}.{name}")
    evaluator = importlib.import_module("lm_eval.evaluator")
    assert evaluator.add_env_info.__module__.startswith("lm_eval")  # nothing left patched


def test_leaf_tasks_reads_the_result_layout(lm_compat):
    raw = {"results": {"g": {}, "a": {"acc,none": 0.5}}, "group_subtasks": {"g": ["a"], "a": []}}
    assert lm_compat.leaf_tasks(raw) == (raw["results"], {"a"})
    with pytest.raises(LibraryChangedError) as excinfo:
        lm_compat.leaf_tasks({"results": {}})
    _loud(excinfo, "lm-eval", "simple_evaluate")


# ------------------------------------------------------------------ torch
def test_forward_hooks_are_seen_globally_and_per_module():
    from romer_aihwkit.compat import torch as torch_compat

    layer = torch.nn.Linear(2, 2)
    assert not torch_compat.has_forward_hooks([layer])
    handle = layer.register_forward_hook(lambda *args: None)
    assert torch_compat.has_forward_hooks([layer])
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda *args: None)
    try:
        assert torch_compat.has_forward_hooks([layer])
    finally:
        handle.remove()
    assert not torch_compat.has_forward_hooks([layer])


def test_forward_hooks_refuse_a_missing_internal(monkeypatch):
    from torch.nn.modules import module as torch_module

    from romer_aihwkit.compat import torch as torch_compat

    monkeypatch.delattr(torch_module, "_global_forward_hooks")
    with pytest.raises(LibraryChangedError, match=r"torch .* changed torch\.nn\.modules\.module\._global_forward_hooks"):
        torch_compat.has_forward_hooks([torch.nn.Linear(2, 2)])
