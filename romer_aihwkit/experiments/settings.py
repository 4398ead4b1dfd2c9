"""What a comparison is asked to do (:class:`CompareSettings`) and what it resolves to (:func:`resolve`).

Two steps, each done once:

* :class:`CompareSettings` is frozen and pure: constructing it checks the values alone (counts,
  ranges, method names, duplicates) and reads no file, device or optional library, so it can be
  built, copied (``dataclasses.replace``) and hashed freely. Its :meth:`~CompareSettings.fingerprint`
  is the identity of the numbers stored in ``settings.json``.
* :func:`resolve` turns it into a frozen :class:`ResolvedSettings`: every device config loaded
  once (with its content hash), every default drift time filled in (one explicit float per device
  and drift time), the optional dependencies checked (lm-eval for ``tasks``, with the extra to
  install), model positions checked against ``seq_len`` and the content fingerprint of every input
  computed. The runner, the CLI and diagnosis read devices from it, never by name again.

Drift time: ``t_inference=None`` means *the device's default* ``t_inference`` (its YAML field),
here as at every public entry point (``--t-inference none``, :func:`~romer_aihwkit.analog.drift_analog_weights`,
diagnosis); an explicit ``0.0`` is a drift of 0 s. After :func:`resolve` no drift time is ``None``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..analog.fingerprint import device_fingerprint
from ..checked_files import code_fingerprint
from ..data.corpus import text_digest
from ..devices import load_device_config
from ..errors import InputError
from ..evaluation.tasks import check_task_code, require_lm_eval
from ..models import MODELS_DIR, list_bundled_models, model_digest
from ..stress import stress_label
from ..validate import check_distinct, check_finite_fields
from .methods import get_method

if TYPE_CHECKING:
    from ..devices import DeviceConfig

__all__ = [
    "CONTROL_DEVICE",
    "MAX_SEEDS",
    "CompareSettings",
    "ResolvedDevice",
    "ResolvedSettings",
    "chip_instances",
    "input_fingerprints",
    "resolve",
    "resolve_device",
]

MAX_SEEDS = 1000
"""Most chip instances one comparison accepts (each costs a programming pass per method)."""

CONTROL_DEVICE = "ideal"
"""The noise-free device every model-editing method is also run on (its ``edit_ppl``)."""

_TEN_YEARS = 10 * 365 * 86400.0
"""Longest drift time any device accepts (:meth:`DeviceConfig.check_t_inference`)."""

_OPTIONAL_DEFAULTS: dict[str, Any] = {"tasks": [], "task_include_path": None, "task_limit": None,
                                      "num_fewshot": None, "train_text": "bundled", "hwa_steps": None,
                                      "controls": False}
"""Settings added after results were first written: at these values they leave the fingerprint alone."""

_LIST_FIELDS = ("models", "devices", "methods", "seeds", "t_inference", "tasks")
"""Fields given as lists and kept as tuples (the settings are frozen); stored as JSON lists."""


@dataclass(frozen=True)
class CompareSettings:
    """Everything that determines the numbers of a comparison (stored with the results).

    Frozen and pure: construction validates the values alone and reads nothing; the list fields
    accept any sequence and are kept as tuples (``settings.json`` stores them as lists). Devices, drift-time defaults, optional dependencies and input files are looked at by
    :func:`resolve` (which :func:`~romer_aihwkit.experiments.run_comparison` calls first).

    Raises:
        InputError: A value that is wrong whatever the files say (no model, no or repeated seeds,
            an unknown or repeated method, a drift time that is not a number in [0 s, 10 years],
            ``seq_len`` < 2, a bad stress spec, ``task_limit`` < 1, ...).
    """

    models: Sequence[str]
    devices: Sequence[str] = ("pcm",)
    methods: Sequence[str] = ("none", "global", "hetero", "romer")
    seeds: Sequence[int] = tuple(range(5))
    t_inference: Sequence[float | None] = (None,)
    """Drift times in seconds; ``None`` means each device's default ``t_inference`` (:func:`resolve`
    fills it in); ``0.0`` is a drift of 0 s."""
    eval_text: str = "bundled"
    calib_text: str = "bundled"
    seq_len: int = 128
    eval_blocks: int | None = 32
    calib_blocks: int | None = 16
    batch_size: int = 8
    stress: str | None = None
    """Function-preserving stress spec applied to every digital model first (:func:`romer_aihwkit.stress.apply_stress`)."""
    tasks: Sequence[str] = ()
    """lm-eval tasks run on every chip instance (:func:`~romer_aihwkit.evaluation.tasks.evaluate_tasks`)."""
    task_include_path: str | None = None
    """Folder of lm-eval task YAMLs besides the bundled tasks (``--include-path``)."""
    task_limit: int | None = None
    """Documents per task (lm-eval's ``limit``; ``None``: all)."""
    num_fewshot: int | None = None
    """Few-shot examples per task (``None``: each task's default)."""
    train_text: str = "bundled"
    """Training text of hardware-aware training (methods ``hwa``, ``hwa+romer``; ``--train-text``)."""
    hwa_steps: int | None = None
    """HWA optimizer steps (``None``: :class:`~romer_aihwkit.baselines.hwa.HWAConfig`'s default)."""
    trust_task_code: bool = False
    """Allow ``task_include_path`` YAMLs that run Python code (``!function``; ``--trust-task-code``).
    A permission, not part of the numbers' identity (left out of the fingerprint)."""
    controls: bool = True
    """Noise-free controls (``--no-controls`` turns them off): every method that edits the model
    (:attr:`Method.edits_model <romer_aihwkit.experiments.methods.Method.edits_model>`) also runs on
    the ``ideal`` device with the same calibration data and seed, and every row carries ``edit_ppl``
    and ``recovered`` (:data:`~romer_aihwkit.evaluation.records.CONTROL_METRICS`). ``recovered`` is
    measured against ``global`` on the same chip instance, so ``global`` is added to the methods
    (first) when a model-editing method is compared without it."""

    def __post_init__(self) -> None:
        for name in _LIST_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise InputError(f"comparison setting {name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if not self.models:
            raise InputError("give at least one model")
        if not self.seeds:
            raise InputError("give at least one seed (--seeds must be >= 1)")
        if len(self.seeds) > MAX_SEEDS:
            raise InputError(f"--seeds must be at most {MAX_SEEDS} chip instances, got {len(self.seeds)}")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**31 for s in self.seeds):
            raise InputError(f"seeds must be integers in [0, 2**31), got {list(self.seeds[:5])}...")
        if len(set(self.seeds)) != len(self.seeds):
            raise InputError(f"seeds must be distinct, got {list(self.seeds)}")
        check_finite_fields(self, "comparison setting")
        check_distinct(self.models, "--model")  # its rows would count twice (two spellings of one folder: resolve)
        check_distinct(self.devices, "--devices")
        check_distinct(self.methods, "--methods")
        check_distinct(self.t_inference, "--t-inference")
        for t in self.t_inference:
            _check_drift_time(t)
        for method in self.methods:
            get_method(method)
        if self.controls and "global" not in self.methods and any(get_method(m).edits_model for m in self.methods):
            object.__setattr__(self, "methods", ("global", *self.methods))
        if self.seq_len < 2:
            raise InputError("seq_len must be at least 2")
        label = stress_label(self.stress)
        object.__setattr__(self, "stress", None if label == "none" else label)
        if self.task_limit is not None and self.task_limit < 1:
            raise InputError(f"--limit must be at least 1, got {self.task_limit}")
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise InputError(f"--num-fewshot must be at least 0, got {self.num_fewshot}")
        if self.hwa_steps is not None and self.hwa_steps < 1:
            raise InputError(f"--hwa-steps must be at least 1, got {self.hwa_steps}")

    def to_dict(self) -> dict[str, Any]:
        """The settings as stored in ``settings.json`` (lists as lists)."""
        data = asdict(self)
        for name in _LIST_FIELDS:
            data[name] = list(data[name])
        return data

    def fingerprint(self) -> str:
        """Identity of the numbers: everything but the seeds and methods, which may be extended."""
        data = self.to_dict()
        data.pop("seeds")
        data.pop("methods")
        data.pop("trust_task_code")
        if data.get("stress") is None:
            data.pop("stress")  # results written before stress existed keep their identity
        for key, default in _OPTIONAL_DEFAULTS.items():
            if data.get(key) == default:
                data.pop(key)  # likewise for results written before tasks and HWA existed
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _check_drift_time(t: Any) -> None:
    """A drift time any device could accept: ``None`` (the device's default) or seconds in [0, 10 years]."""
    if t is None:
        return
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 <= t <= _TEN_YEARS:
        raise InputError(f"t_inference must be None (the device's default) or a finite number of seconds >= 0 and "
                         f"<= {_TEN_YEARS:g} (10 years), got {t!r}")


# ------------------------------------------------------------------ resolved once
@dataclass(frozen=True)
class ResolvedDevice:
    """One device of a comparison, loaded once."""

    name: str
    """As the settings name it (a preset name or a YAML path): the rows' ``device``."""
    config: DeviceConfig
    """The validated, frozen config."""
    fingerprint: str
    """Content hash of the config (:func:`romer_aihwkit.analog.fingerprint.device_fingerprint`)."""
    t_inference: tuple[float, ...]
    """The settings' drift times for this device, ``None`` replaced by the config's default."""


@dataclass(frozen=True, eq=False)
class ResolvedSettings:
    """:class:`CompareSettings` with every input looked at once (made by :func:`resolve`; compared by identity)."""

    settings: CompareSettings
    devices: Mapping[str, ResolvedDevice]
    """By the settings' device names, in their order."""
    control: ResolvedDevice | None
    """The noise-free control device (``ideal`` at its default drift time) when ``settings.controls``."""
    inputs: Mapping[str, str]
    """Content fingerprint of every input (:func:`input_fingerprints`)."""
    model_ids: Mapping[str, str]
    """Each model's content fingerprint (seeds follow a model's content, never its folder)."""

    def fingerprint(self) -> str:
        """The settings' fingerprint (:meth:`CompareSettings.fingerprint`)."""
        return self.settings.fingerprint()

    def device(self, name: str) -> DeviceConfig:
        """The loaded config of device ``name`` (a settings device or the control device)."""
        if name in self.devices:
            return self.devices[name].config
        if self.control is not None and name == self.control.name:
            return self.control.config
        raise KeyError(f"device {name!r} is not one of this comparison's devices ({', '.join(self.devices)})")

    def chip_instances(self) -> Iterator[tuple[str, str, float, int]]:
        """``(model, device, t_inference, seed)`` of every chip instance, in run order."""
        for model in self.settings.models:
            for device in self.devices.values():
                for t in device.t_inference:
                    for seed in self.settings.seeds:
                        yield model, device.name, t, int(seed)


def resolve(settings: CompareSettings | ResolvedSettings) -> ResolvedSettings:
    """Look at every input of ``settings`` once: devices, drift times, optional dependencies, files.

    Each device config is loaded once, and each drift time ``None`` becomes that device's default
    ``t_inference``; every drift time is checked against what its device accepts (rram-wan2022:
    1 s, 1 day or 2 days).

    Args:
        settings: The settings (a :class:`ResolvedSettings` is returned as it is).

    Returns:
        The frozen :class:`ResolvedSettings`.

    Raises:
        InputError: An unknown device, a drift time a device does not accept, a drift time given
            twice for a device (e.g. ``none`` and its default), one model or device named twice
            by two spellings of one path, ``seq_len`` beyond a model's positions, a missing
            ``task_include_path`` folder.
        UserError: ``tasks`` without the optional ``eval`` extra (lm-eval), or task YAMLs that
            run code without ``trust_task_code``.
        FileNotFoundError: A device YAML path that does not exist.
        DeviceConfigError: An invalid device config.
    """
    if isinstance(settings, ResolvedSettings):
        return settings

    check_distinct([_same_source_key(m) for m in settings.models], "--model")
    check_distinct([_same_source_key(d) for d in settings.devices], "--devices")
    devices = {name: resolve_device(name, settings.t_inference) for name in settings.devices}
    control = resolve_device(CONTROL_DEVICE) if settings.controls else None
    for model in settings.models:
        positions = _declared_positions(model)
        if positions is not None and settings.seq_len > positions:
            raise InputError(f"--seq-len {settings.seq_len} is beyond the {positions} positions model {model} handles "
                             f"(max_position_embeddings in its config.json); use --seq-len {positions} or less")
    _check_tasks(settings)
    model_ids = {m: model_digest(m) for m in settings.models}
    inputs = _input_fingerprints(settings, devices, model_ids)
    return ResolvedSettings(settings, MappingProxyType(devices), control, MappingProxyType(inputs),
                            MappingProxyType(model_ids))


def resolve_device(device: str | Path | DeviceConfig, t_inference: Sequence[float | None] = (None,)) -> ResolvedDevice:
    """Load ``device`` once and turn its drift times into checked seconds (``None``: its default).

    Args:
        device: A preset name, a YAML path or a :class:`~romer_aihwkit.devices.DeviceConfig`.
        t_inference: Drift times in seconds; ``None`` is the config's default ``t_inference``.

    Raises:
        InputError: A drift time the device does not accept, or one given twice (``None`` and the default).
    """

    config = load_device_config(device)
    name = str(device) if isinstance(device, (str, Path)) else config.name
    times = tuple(config.check_t_inference(config.t_inference if t is None else t) for t in t_inference)
    if len(set(times)) != len(times):
        raise InputError(f"--t-inference gives device {name} the drift time {config.t_inference:g} s twice ('none' "
                         f"is its default, {config.t_inference:g} s); give each time once")
    return ResolvedDevice(name, config, device_fingerprint(config), times)


def _check_tasks(settings: CompareSettings) -> None:
    """The optional dependencies and task folders the settings need."""
    if settings.tasks:
        require_lm_eval()
    if settings.task_include_path is not None:
        if not Path(settings.task_include_path).expanduser().is_dir():
            raise InputError(f"--include-path {settings.task_include_path}: no such folder of lm-eval task YAMLs")

        check_task_code(settings.task_include_path, settings.trust_task_code)


def chip_instances(settings: CompareSettings | ResolvedSettings) -> list[tuple[str, str, float, int]]:
    """``(model, device, t_inference, seed)`` of every chip instance, in run order (resolves ``settings``)."""
    return list(resolve(settings).chip_instances())


# ------------------------------------------------------------------ content fingerprints of the inputs
def input_fingerprints(settings: CompareSettings | ResolvedSettings) -> dict[str, str]:
    """Content hash of every input of a comparison: each model's files, device config, text, and the code.

    Large files (weights) are hashed from their size and 16 sampled 64 KiB blocks, small files
    fully (:func:`romer_aihwkit.checked_files.content_digest`); device configs by their resolved
    content (:func:`romer_aihwkit.analog.fingerprint.device_fingerprint`); a hub id by its cached snapshot
    (recorded as unchecked when there is none). ``engine`` is the identity of the simulation code
    and library versions (:func:`romer_aihwkit.checked_files.code_fingerprint`). Computed once by
    :func:`resolve` (a :class:`ResolvedSettings` gives its own).

    Returns:
        ``{"model NAME": hash, "device NAME": hash, "eval_text": hash, "calib_text": hash,
        "train_text": hash, "engine": identity}`` (and ``task_include_path`` when given).
    """
    return dict(resolve(settings).inputs)


def _input_fingerprints(settings: CompareSettings, devices: Mapping[str, ResolvedDevice],
                        model_ids: Mapping[str, str]) -> dict[str, str]:

    out = {f"model {m}": model_ids[m] for m in settings.models}
    out.update({f"device {d.name}": d.fingerprint for d in devices.values()})
    out["eval_text"] = text_digest(settings.eval_text)
    out["calib_text"] = text_digest(settings.calib_text)
    out["train_text"] = text_digest(settings.train_text)
    if settings.task_include_path is not None:
        out["task_include_path"] = text_digest(settings.task_include_path)
    out["engine"] = code_fingerprint()
    return out




def _declared_positions(name: str) -> int | None:
    """``max_position_embeddings`` from a local or bundled model's ``config.json``, read without
    loading the model (``None`` for a hub id or a config that does not declare it)."""

    path = (MODELS_DIR / name if name in list_bundled_models() else Path(name).expanduser()) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _same_source_key(name: str) -> str:
    """A device name, or the resolved path of a device YAML file (two spellings of one file are one entry)."""
    path = Path(name).expanduser()
    try:
        return str(path.resolve()) if path.exists() else name
    except OSError:
        return name
