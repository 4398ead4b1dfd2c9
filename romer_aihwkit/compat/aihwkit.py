"""AIHWKit internals the AIHWKit engine reads and writes, behind one function each.

The per-matrix engine (:class:`~romer_aihwkit.analog.matrix.AnalogMatrix`) writes the shared
per-tile physics into AIHWKit's own tiles, saves and restores their state, and lays them out for
the batched forward; input-range calibration presents a whole model to AIHWKit as one analog
module. All of that touches attributes AIHWKit does not document as API (``TileModuleArray``'s
grid, the simulator tile's ``_analog_mvm``, the inference tile's programming and drift-compensation
attributes). Every such access is here: when an AIHWKit release renames or drops one, the function
raises :class:`~romer_aihwkit.errors.EngineError` naming the AIHWKit version and the internal,
instead of silently setting a new attribute nobody reads.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import EngineError
from . import changed_message, installed_version

__all__ = [
    "PROGRAMMING_STATE", "TILE_STATE_ATTRS", "analog_module", "analog_tiles_of_model", "calibrate_input_ranges",
    "clear_programming_state", "clip_tile_weights", "fast_forward_grid", "is_cxx_tile", "load_tile_state", "programming_state_released",
    "redraw_out_noise", "release_programming_state", "set_tile_input_range", "set_tile_weight", "slice_weights", "tile_grid",
    "tile_state", "tile_weight", "write_tile_chip",
]

SUPPORTED = "aihwkit>=1.1,<1.2"
"""The AIHWKit releases these functions are written against (``pyproject.toml``)."""

TILE_STATE_ATTRS = ("programmed_weights", "reference_combined_weights", "drift_baseline", "drift_readout_tensor",
                    "alpha")
"""Tensor attributes of an inference tile that make it one chip instance (chip-state files)."""

PROGRAMMING_STATE = re.compile(r"/\d+\.(programmed_weights|reference_combined_weights|drift_readout_tensor"
                               r"|drift_noise_parameters\.\d+)$")
"""Chip-state keys of AIHWKit's programming state (not part of the chip's forward)."""


def version() -> str:
    """The installed AIHWKit version (``"unknown"`` when it has no metadata)."""
    return installed_version("aihwkit", "unknown")


def _changed(what: str, detail: object) -> EngineError:
    return EngineError(changed_message("AIHWKit", version(), what, detail, SUPPORTED, verb="reads"))


@contextmanager
def _internal(what: str) -> Iterator[None]:
    """Turn a missing or re-shaped AIHWKit internal into an :class:`EngineError` naming the version."""
    try:
        yield
    except (AttributeError, KeyError, TypeError) as exc:
        raise _changed(what, exc) from exc


def _require(obj: Any, attrs: Iterable[str], what: str) -> None:
    """Refuse to set attributes AIHWKit no longer has (a plain ``setattr`` would silently add them)."""
    missing = [a for a in attrs if not hasattr(obj, a)]
    if missing:
        raise _changed(what, f"{type(obj).__name__} has no {', '.join(missing)}")


# --------------------------------------------------------------------------- the tile grid
def analog_module(layer: nn.Module) -> nn.Module:
    """The tile module of an ``AnalogLinear`` (a tile, or a ``TileModuleArray``)."""
    return getattr(layer, "analog_module", layer)


CXX_TILES = "AIHWKit's C++ tiles"
""":func:`fast_forward_grid`'s answer for C++ tiles (not a limitation: their own forward is the reference)."""


def is_cxx_tile(tile: Any) -> bool:
    """Whether ``tile`` is one of AIHWKit's C++ inference tiles (weights behind ``get/set_weights``)."""
    return type(tile).__name__ == "InferenceTile" and type(tile).__module__ == "aihwkit.simulator.tiles.inference"


def tile_weight(tile: Any) -> torch.Tensor:
    """The conductance-mapped weights ``[out_t, in_t]`` of an inference tile (live for torch tiles, a
    copy for C++ tiles)."""
    with _internal("the simulator tile's weights (tile.tile.weight, or get_weights on C++ tiles)"):
        return tile.tile.get_weights() if is_cxx_tile(tile) else tile.tile.weight.detach()


def set_tile_weight(tile: Any, weight: torch.Tensor) -> None:
    """Write ``weight`` into an inference tile, as they are (no clipping, no remapping)."""
    with _internal("the simulator tile's weights (tile.tile.weight, or set_weights on C++ tiles)"):
        if is_cxx_tile(tile):
            tile.tile.set_weights(weight.detach().to("cpu", torch.float32).contiguous())
        else:
            tile.tile.weight.data.copy_(weight)


def tile_grid(module: nn.Module) -> tuple[list[list[Any]], list[int], list[int], torch.Tensor | None] | str:
    """``(tiles by input slice, input sizes, output sizes, array bias)`` of a tile module, or a string
    naming why it is no grid of inference tiles (``TorchInferenceTile`` s with AIHWKit's own analog
    MVM, or C++ ``InferenceTile`` s) that the shared physics can program."""
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM
    from aihwkit.simulator.tiles.array import TileModuleArray
    from aihwkit.simulator.tiles.inference_torch import TorchInferenceTile
    from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile

    grid: list[list[Any]]
    with _internal("TileModuleArray's tile grid (array, in_sizes, out_sizes, bias)"):
        if type(module) is TorchInferenceTile or is_cxx_tile(module):
            tile: Any = module
            grid, in_sizes, out_sizes, bias = [[tile]], [int(tile.in_size)], [int(tile.out_size)], None
        elif type(module) is TileModuleArray:
            array: Any = module  # TileModuleArray's attributes are set in its __init__
            grid = [list(row) for row in array.array]
            in_sizes, out_sizes, bias = list(array.in_sizes), list(array.out_sizes), array.bias
        else:
            return f"tile module {type(module).__name__}"
    with _internal("the simulator tile's analog MVM class (tile.tile._analog_mvm)"):
        for row in grid:
            for tile in row:
                if is_cxx_tile(tile):
                    if tile.analog_bias or tile.in_trans or tile.out_trans:
                        return "analog bias or transposed tiles"
                    continue
                if type(tile) is not TorchInferenceTile or type(tile.tile) is not TorchSimulatorTile:
                    return f"tile class {type(tile).__name__}/{type(tile.tile).__name__}"
                if tile.tile._analog_mvm is not AnalogMVM:
                    return f"analog MVM class {tile.tile._analog_mvm.__name__}"
                if tile.analog_bias or tile.in_trans or tile.out_trans:
                    return "analog bias or transposed tiles"
                _require(tile, _FORWARD_ATTRS, "the inference tile's forward attributes")
                _require(tile.tile, ("weight", "out_noise_values"), "the simulator tile's forward attributes")
    return grid, in_sizes, out_sizes, bias


def fast_forward_grid(module: nn.Module) -> tuple[list[list[Any]], list[int], list[int], torch.Tensor | None] | str:
    """:func:`tile_grid` for the batched forward, which reproduces the torch tiles only: C++ tiles
    give :data:`CXX_TILES` (they run their own forward)."""
    found = tile_grid(module)
    if not isinstance(found, str) and any(is_cxx_tile(tile) for row in found[0] for tile in row):
        return CXX_TILES
    return found


_FORWARD_ATTRS = ("rpu_config", "out_size", "input_range", "mapping_scales", "alpha", "out_scaling_alpha",
                  "digital_bias", "bias")
"""What the batched forward (:mod:`romer_aihwkit.analog.fast`) reads of each tile of a :func:`tile_grid`."""


def slice_weights(row: list[Any], bounds: list[tuple[int, int]]) -> torch.Tensor:
    """The ``[out, in_slice]`` weights of the output tiles ``row`` of one input slice, as one tensor.

    One tile: its own weight tensor. Several: one contiguous block, and each tile's weight becomes a
    view of its rows of it (no extra copy; programming and ``set_weights`` replace ``weight.data``,
    which the forward's cache detects by data pointer).
    """
    with _internal("the simulator tile's weight (tile.tile.weight)"):
        if len(row) == 1:
            return row[0].tile.weight.detach()
        weight = torch.cat([t.tile.weight.detach() for t in row], dim=0)
        for t, (a, b) in zip(row, bounds):
            t.tile.weight.data = weight[a:b]
        return weight


# --------------------------------------------------------------------------- programming state
_PROGRAMMING_ATTRS = ("reference_combined_weights", "programmed_weights", "drift_noise_parameters",
                      "drift_readout_tensor")


def write_tile_chip(tile: Any, weight: torch.Tensor, mapping: torch.Tensor | None, alpha: torch.Tensor | None,
                    baseline: torch.Tensor | None, compensated: bool) -> None:
    """Write one programmed (and drifted) tile computed by the shared physics into AIHWKit's tile.

    Args:
        tile: an inference tile.
        weight: its conductance-mapped weights.
        mapping: its per-row digital mapping scales, or ``None`` (no weight remapping).
        alpha: its drift compensation (``None``: not drifted, 1 in the baseline's shape).
        baseline: the compensation's read-out after programming.
        compensated: whether the rpu_config has drift compensation (``alpha`` and ``baseline`` are set).
    """
    _require(tile, _PROGRAMMING_ATTRS + (("drift_baseline", "alpha") if compensated else ()),
             "the inference tile's programming attributes")
    set_tile_weight(tile, weight)
    with _internal("the inference tile's mapping scales (set_mapping_scales)"):
        if mapping is not None:
            tile.set_mapping_scales(mapping)
    if compensated:
        if baseline is None:
            raise ValueError("a compensated tile needs the compensation's read-out after programming (baseline)")
        tile.drift_baseline = baseline
        tile.__dict__.pop("alpha", None)  # as AIHWKit's drift_weights (legacy attribute)
        # not drifted: alpha 1 in the compensation's shape (the baseline's), so that the chip-state
        # layout does not depend on whether a chip was drifted
        tile.alpha = alpha if alpha is not None else torch.ones_like(baseline)
    clear_programming_state(tile, readout=True)


def clear_programming_state(tile: Any, readout: bool = False, noise: bool = True) -> None:
    """Drop AIHWKit's programming state of ``tile`` (the reference and programmed weights, and with
    ``noise`` the drift coefficients, with ``readout`` the compensation's identity read-out)."""
    attrs = ["reference_combined_weights", "programmed_weights"] + (["drift_noise_parameters"] if noise else []) + (
        ["drift_readout_tensor"] if readout else [])
    _require(tile, attrs, "the inference tile's programming attributes")
    for attr in attrs:
        setattr(tile, attr, None)


def release_programming_state(tile: Any, keep_programmed: bool) -> None:
    """Drop tile state the forward does not need (``keep_programmed``: keep what a drift needs)."""
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation, PerColumnDriftCompensation

    _require(tile, _PROGRAMMING_ATTRS, "the inference tile's programming attributes")
    tile.reference_combined_weights = None
    if not keep_programmed:
        tile.programmed_weights = None
        tile.drift_noise_parameters = None
    comp = getattr(tile.rpu_config, "drift_compensation", None)
    if type(comp) in (GlobalDriftCompensation, PerColumnDriftCompensation):
        tile.drift_readout_tensor = None  # eye(in_size), re-created by AIHWKit when needed


def programming_state_released(tile: Any) -> bool:
    """Whether AIHWKit's ``programmed_weights`` of ``tile`` are gone (a drift must re-program first)."""
    _require(tile, ("programmed_weights",), "the inference tile's programming attributes")
    return tile.programmed_weights is None


def clip_tile_weights(tile: Any) -> None:
    """AIHWKit's weight clipping of ``tile`` (its rpu_config's ``clip``), as before programming."""
    clip = getattr(tile.rpu_config, "clip", None)
    if clip is None or clip.type.name == "NONE":
        return
    with _internal("the simulator tile's clip_weights"):
        if is_cxx_tile(tile):  # C++ tiles take their bindings
            from aihwkit.simulator.parameters.helpers import parameters_to_bindings

            tile.tile.clip_weights(parameters_to_bindings(clip, tile.get_data_type()))
        else:
            tile.tile.clip_weights(clip)


def redraw_out_noise(tile: Any) -> None:
    """Redraw the per-column output-noise levels of ``tile`` from the current random stream, with
    AIHWKit's own formula (``TorchSimulatorTile.__init__``): they belong to the chip instance."""
    noise = getattr(tile.tile, "out_noise_values", None)
    if noise is None:
        return
    with _internal("the simulator tile's out_noise_values"):
        out_noise = tile.rpu_config.forward.out_noise
        noise.copy_((out_noise * (1.0 + torch.randn(noise.shape, dtype=noise.dtype))).abs())


# --------------------------------------------------------------------------- chip-state tensors
def tile_state(tile: Any) -> dict[str, torch.Tensor]:
    """The tensors that make ``tile`` one chip instance, by part name (live tensors)."""
    _require(tile, TILE_STATE_ATTRS + ("drift_noise_parameters",), "the inference tile's chip-state attributes")
    out: dict[str, torch.Tensor] = {}
    with _internal("the inference tile's chip-state attributes"):
        out["weight"] = tile_weight(tile)
        for attr in TILE_STATE_ATTRS:
            value = getattr(tile, attr)
            if isinstance(value, torch.Tensor):
                out[attr] = value.detach()
        for j, value in enumerate(tile.drift_noise_parameters or []):
            if isinstance(value, torch.Tensor):
                out[f"drift_noise_parameters.{j}"] = value.detach()
        if getattr(tile.tile, "out_noise_values", None) is not None:
            out["out_noise_values"] = tile.tile.out_noise_values.detach()
    return out


def load_tile_state(tile: Any, part: dict[str, torch.Tensor]) -> None:
    """Write tensors of :func:`tile_state`'s form into ``tile``."""
    _require(tile, TILE_STATE_ATTRS + ("drift_noise_parameters",), "the inference tile's chip-state attributes")
    with _internal("the inference tile's chip-state attributes"):
        device = tile_weight(tile).device
        set_tile_weight(tile, part["weight"])
        for attr in TILE_STATE_ATTRS:
            if attr in part:
                value = part[attr].to(device)
                if attr == "alpha":
                    tile.__dict__.pop("alpha", None)
                setattr(tile, attr, value)
        params, j = [], 0
        while f"drift_noise_parameters.{j}" in part:
            params.append(part[f"drift_noise_parameters.{j}"].to(device))
            j += 1
        tile.drift_noise_parameters = params or None
        if "out_noise_values" in part:
            tile.tile.out_noise_values.data.copy_(part["out_noise_values"])


# --------------------------------------------------------------------------- input ranges
def _model_view(model: nn.Module) -> Any:
    """``model`` presented to AIHWKit as one analog module (its ``named_analog_tiles`` walk the model)."""
    from aihwkit.nn.modules.base import AnalogLayerBase

    class _AnalogTilesOf(AnalogLayerBase, nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            nn.Module.__init__(self)
            self.inner = inner

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    return _AnalogTilesOf(model)


def analog_tiles_of_model(model: nn.Module) -> list[Any]:
    """Every AIHWKit analog tile anywhere in ``model``, in module order."""
    with _internal("AnalogLayerBase.named_analog_tiles"):
        return [tile for _, tile in _model_view(model).named_analog_tiles()]


def calibrate_input_ranges(model: nn.Module, batches: list[tuple[tuple[torch.Tensor, ...], dict[str, Any]]],
                           quantile: float, record: Callable[[Any, tuple], None] | None = None) -> None:
    """AIHWKit's ``CACHE_QUANTILE`` input-range calibration of every tile of ``model`` (a whole
    converted model, not one AIHWKit layer); ``record(tile, args)`` sees each tile's inputs."""
    from aihwkit.inference.calibration import InputRangeCalibrationType
    from aihwkit.inference.calibration import calibrate_input_ranges as _calibrate

    view = _model_view(model)
    view.eval()  # AIHWKit restores this mode on the whole model afterwards
    handles = [] if record is None else [tile.register_forward_pre_hook(record) for tile in analog_tiles_of_model(model)]
    try:
        with torch.no_grad(), _internal("calibrate_input_ranges"):
            _calibrate(view, InputRangeCalibrationType.CACHE_QUANTILE, iter(batches), quantile=quantile)
    finally:
        for h in handles:
            h.remove()


def set_tile_input_range(tile: Any, value: float) -> None:
    """Set ``tile``'s static input range (and its rpu_config's ``init_value``, as AIHWKit's calibration does)."""
    with _internal("the tile's input range (set_input_range, pre_post.input_range.init_value)"):
        tile.set_input_range(float(value))
        tile.rpu_config.pre_post.input_range.init_value = tile.input_range.item()
