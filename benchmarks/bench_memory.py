"""Memory held per parameter: the converted analog model vs the same model left digital.

Plain script (not a test):  python benchmarks/bench_memory.py [--models NAME ...] [--device pcm]

Method: count the bytes of every distinct tensor storage the model holds -- parameters, buffers
and AIHWKit's tile attributes that are neither (``reference_combined_weights``,
``programmed_weights``, ``drift_noise_parameters``, ``drift_readout_tensor``, ``drift_baseline``,
``alpha``, ...) plus the fast forward's cached layout -- deduplicated by storage, so views (split
tiles sharing one block) count once. This is exact for what the model keeps alive (it does not
see allocator slack or transient buffers inside one programming call). Stages: after conversion,
after ``program_analog_weights`` (the window before drift), after ``drift_analog_weights`` plus
one forward (the steady state for evaluation), each with AIHWKit's programming state released
(default) and kept (``set_keep_programming_state(True)``) for the AIHWKit engine, and with the clean
weights in memory (``reference="auto"`` for these small models) or spilled to disk (``"spill"``) for
the stacked engine.
"""

from __future__ import annotations

import argparse

import _common
import torch
from torch import nn


def _tensors(obj, depth: int = 0):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o, depth + 1)
    elif depth < 3 and isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o, depth + 1)
    elif depth < 3 and hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            value = getattr(obj, name)
            if not isinstance(value, nn.Module):
                yield from _tensors(value, depth + 1)


def held_bytes(model: nn.Module, prefix_filter=None) -> int:
    """Bytes of distinct storages held by the modules (all, or those ``prefix_filter(module)`` accepts),
    including the clean weights a stacked engine's reference store keeps in memory."""
    from romer_aihwkit.analog.reference import ReferenceStore

    seen: dict[int, int] = {}
    for module in model.modules():
        if prefix_filter is not None and not prefix_filter(module):
            continue
        for value in module.__dict__.values():
            if isinstance(value, nn.Module):
                continue
            if isinstance(value, ReferenceStore):
                value = list(value._memory.values())
            for t in _tensors(value):
                if t.device.type == "meta":
                    continue
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--device", default="pcm")
    parser.add_argument("--engines", nargs="*", default=["stacked", "aihwkit"])
    parser.add_argument("--out", default="bench_memory")
    args = parser.parse_args()
    torch.set_num_threads(2)

    import romer_aihwkit as ra
    from romer_aihwkit.analog.matrix import AnalogMatrix, StackedMatrix, set_keep_programming_state
    from romer_aihwkit.analog.stacked import AnalogStack

    def analog_parts(model):
        """``(converted analog weights, modules owning their tiles)``."""
        n, owners = 0, []
        for m in model.modules():
            if isinstance(m, AnalogMatrix) or isinstance(m, StackedMatrix):
                n += m.out_features * m.in_features
                owners.append(m)
            elif isinstance(m, AnalogStack) and not any(m is getattr(o, "stack", None) for o in owners):
                n += sum(m.analog) * m.out_features * m.in_features
                owners.append(m)
        return n, {id(s) for o in owners for s in o.modules()}

    models, cfg = _common.models_and_device(args.models, args.device)
    rows, results = [], []
    for name, factory in models:
        digital, _ = factory()
        digital_bytes = held_bytes(digital)
        n_params = sum(p.numel() for p in digital.parameters())
        x = torch.randint(3, digital.config.vocab_size, (1, 32))
        variants = [(e, k, r) for e in args.engines
                    for k, r in (((False, None), (True, None)) if e == "aihwkit" else ((False, "auto"), (False, "spill")))]
        for engine, keep, reference in variants:
            old = set_keep_programming_state(keep)
            try:
                analog, _ = factory()
                extra = {"reference": reference} if reference else {}
                ra.convert_to_analog_moe(analog, cfg, engine=engine, **extra)
                analog_weights, owned = analog_parts(analog)
                only_matrices = lambda mod: id(mod) in owned  # noqa: E731
                stages = {}
                stages["converted"] = (held_bytes(analog), held_bytes(analog, only_matrices))
                analog.program_analog_weights(seed=0)
                stages["programmed"] = (held_bytes(analog), held_bytes(analog, only_matrices))
                analog.drift_analog_weights()
                with torch.no_grad():
                    analog(x)
                stages["drifted+forward"] = (held_bytes(analog), held_bytes(analog, only_matrices))
            finally:
                set_keep_programming_state(old)
            for stage, (total, mats) in stages.items():
                res = {
                    "model": name, "device": cfg.name, "engine": engine, "reference": reference, "keep_programming_state": keep, "stage": stage,
                    "digital_bytes": digital_bytes, "analog_bytes": total,
                    "ratio_model": total / digital_bytes,
                    "params": n_params, "analog_matrix_weights": analog_weights,
                    "bytes_per_analog_weight": mats / analog_weights,
                    "ratio_per_analog_weight_vs_digital_fp32": mats / analog_weights / 4.0,
                }
                results.append(res)
                rows.append([name, engine + (" (state kept)" if keep else "") + (f", reference={reference}" if reference else ""), stage, f"{digital_bytes / 2**20:.2f}",
                             f"{total / 2**20:.2f}", f"{res['ratio_model']:.2f}x", f"{res['bytes_per_analog_weight']:.2f}",
                             f"{res['ratio_per_analog_weight_vs_digital_fp32']:.2f}x"])
        del digital
    _common.table(
        f"Memory held ({cfg.name}); digital weights are fp32 (4 B/param)",
        ["model", "engine", "stage", "digital MiB", "analog MiB", "analog/digital (model)",
         "B per analog weight", "per analog weight vs digital"],
        rows,
    )
    path = _common.write_json(args.out, {"settings": vars(args), "method": __doc__.split("Method: ")[1].split("\n\n")[0],
                                         "machine": _common.machine(), "results": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
