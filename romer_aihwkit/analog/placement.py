"""Placement as data: which device (or digital) each weight matrix of a converted model goes on.

A *placement* is asked once per weight matrix at conversion: it receives the matrix's
:class:`MatrixSite` (role, MoE layer, expert, name) and returns a device config (a
:class:`~romer_aihwkit.devices.DeviceConfig`, a preset name or a YAML path) or :data:`DIGITAL`.
It is AIHWKit's ``specific_rpu_config_fun`` and torchao's ``filter_fn`` for MoE models. Any
callable works; the helpers here build the usual ones:

* :func:`default_placement`: today's keywords of :func:`~romer_aihwkit.convert_to_analog_moe`
  (``analog_router``, ``analog_attention``, ``digital_experts``) on one device;
* :func:`by_role`: a device per role (``{"router": "rram-wan2022"}``), the others from ``default``
  (a device, :data:`DIGITAL` or another placement, which makes them compose).

Examples (a diagnosis component switch is a placement)::

    from romer_aihwkit.analog.placement import DIGITAL, by_role, default_placement

    # router, shared experts and attention digital, everything else (the routed experts) on "pcm"
    experts_only = by_role({"router": DIGITAL, "shared_expert": DIGITAL, "attention": DIGITAL}, default="pcm")
    # component "router" on "rram-wan2022", everything else as the keywords place it
    router_on_rram = by_role({"router": "rram-wan2022"}, default=default_placement("pcm"))
    model = convert_to_analog_moe(model, placement=router_on_rram)

:func:`plan_placement` asks a placement about every site before the model is touched, loads each
distinct device once and checks the answers; :class:`PlacementPlan` is its result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..devices import DeviceConfig, load_device_config
from ..errors import InputError
from .matrix import ROLES

__all__ = ["DIGITAL", "MatrixSite", "Placement", "PlacementPlan", "by_role", "default_placement", "plan_placement",
           "site_name"]


@dataclass(frozen=True)
class MatrixSite:
    """Where a weight matrix sits in the model: what a placement is asked about."""

    role: str
    """``"router"``, ``"expert"``, ``"shared_expert"`` or ``"attention"``."""
    layer: int | None
    """Index of its MoE layer among the model's MoE layers (``None`` for attention)."""
    expert: int | None
    """Routed expert index (``None`` unless ``role == "expert"``)."""
    name: str
    """Its fully qualified name, e.g. ``model.layers.0.mlp.experts.3.gate_up`` or ``model.layers.0.self_attn.q_proj``."""


class _Digital:
    """The type of :data:`DIGITAL` (one instance)."""

    _instance: _Digital | None = None

    def __new__(cls) -> _Digital:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DIGITAL"

    def __reduce__(self) -> str:
        return "DIGITAL"


DIGITAL: Final = _Digital()
"""Placement answer: keep this matrix digital (no tile)."""

Placement = Callable[[MatrixSite], Any]
"""A placement: ``site -> DeviceConfig | preset name | YAML path | DIGITAL``."""


def site_name(block_name: str, name: str) -> str:
    """The fully qualified name of matrix ``name`` of module ``block_name`` (no empty parts)."""
    return ".".join(part for part in (*block_name.split("."), *name.split(".")) if part)


def matrix_site(layer_index: int, block_name: str, role: str, name: str, expert: int | None = None) -> MatrixSite:
    """The site of matrix ``name`` of the module ``block_name`` (MoE layer ``layer_index``; ``-1``: none)."""
    layer = None if role == "attention" or layer_index < 0 else layer_index
    return MatrixSite(role, layer, expert, site_name(block_name, name))


def _check_role(role: Any, where: str) -> None:
    if role not in ROLES:
        raise InputError(f"{where}: unknown role {role!r}; roles are {', '.join(ROLES)}")


def _check_answer(value: Any, where: str) -> None:
    if value is DIGITAL or isinstance(value, (str, os.PathLike)) or callable(value) or _is_device(value):
        return
    raise InputError(f"{where}: {value!r} ({type(value).__name__}) is not a device config, a preset name or "
                     "YAML path, DIGITAL or a placement")


def _is_device(value: Any) -> bool:
    return isinstance(value, DeviceConfig)


def _pairs(digital_experts: Any) -> frozenset[tuple[int, int]]:
    """``(layer, expert)`` pairs from pairs or a ``{layer: [experts]}`` mapping (form checked, not range)."""
    if digital_experts is None:
        return frozenset()
    pairs: list[tuple[int, int]] = []
    if isinstance(digital_experts, Mapping):
        for layer, experts in digital_experts.items():
            pairs.extend((int(layer), int(e)) for e in experts)
    else:
        for item in digital_experts:
            if not (isinstance(item, (tuple, list)) and len(item) == 2):
                raise InputError(f"digital_experts entries must be (layer, expert) pairs, got {item!r}")
            pairs.append((int(item[0]), int(item[1])))
    return frozenset(pairs)


def normalise_digital_experts(digital_experts: Any, n_experts: Sequence[int]) -> dict[int, frozenset[int]]:
    """``{moe_layer: experts}`` from ``(layer, expert)`` pairs or a ``{layer: [experts]}`` mapping, checked
    against ``n_experts`` (experts per MoE layer).

    Raises:
        InputError: an entry is not a pair, or a layer or expert is out of range.
    """
    out: dict[int, set[int]] = {}
    for layer, expert in sorted(_pairs(digital_experts)):
        if not 0 <= layer < len(n_experts):
            raise InputError(f"digital_experts: MoE layer {layer} out of range (model has {len(n_experts)} MoE layers)")
        if not 0 <= expert < n_experts[layer]:
            raise InputError(f"digital_experts: expert {expert} out of range for MoE layer {layer} "
                             f"({n_experts[layer]} experts)")
        out.setdefault(layer, set()).add(expert)
    return {k: frozenset(v) for k, v in out.items()}


@dataclass(frozen=True)
class KeywordPlacement:
    """The placement of :func:`convert_to_analog_moe`'s keywords: one device, optional digital parts."""

    device: Any
    analog_router: bool = True
    analog_attention: bool = False
    digital_experts: frozenset[tuple[int, int]] = frozenset()
    """``(layer, expert)`` pairs kept digital (checked against the model by :meth:`validate`)."""

    def __post_init__(self) -> None:
        _check_answer(self.device, "default_placement device")
        if self.device is DIGITAL or (callable(self.device) and not _is_device(self.device)):
            raise InputError("default_placement takes a device (config, preset name or YAML path)")

    def validate(self, n_experts: Sequence[int]) -> None:
        """Check ``digital_experts`` against a model with ``n_experts[layer]`` experts per MoE layer."""
        normalise_digital_experts(self.digital_experts, n_experts)

    def __call__(self, site: MatrixSite) -> Any:
        if site.role == "router" and not self.analog_router:
            return DIGITAL
        if site.role == "attention" and not self.analog_attention:
            return DIGITAL
        if site.role == "expert" and (site.layer, site.expert) in self.digital_experts:
            return DIGITAL
        return self.device


def default_placement(device_config: Any = "pcm", analog_router: bool = True, analog_attention: bool = False,
                      digital_experts: Iterable[tuple[int, int]] | Mapping[int, Iterable[int]] | None = None
                      ) -> KeywordPlacement:
    """The placement of :func:`~romer_aihwkit.convert_to_analog_moe`'s keywords.

    Args:
        device_config: The device of every analog matrix (config, preset name or YAML path).
        analog_router: Routers on tiles (``False``: digital).
        analog_attention: Attention projections on tiles (``False``: left as they are).
        digital_experts: ``(moe_layer, expert)`` pairs (or ``{layer: [experts]}``) kept digital;
            checked against the model at conversion.

    Returns:
        A placement; routers, routed experts and shared experts go on ``device_config`` unless
        the keywords say otherwise.
    """
    return KeywordPlacement(device_config, bool(analog_router), bool(analog_attention), _pairs(digital_experts))


@dataclass(frozen=True)
class RolePlacement:
    """A device per role, the others from ``default`` (see :func:`by_role`)."""

    devices: Mapping[str, Any]
    default: Any = DIGITAL

    def __post_init__(self) -> None:
        if not isinstance(self.devices, Mapping):
            raise InputError(f"by_role takes a mapping role -> device, got {type(self.devices).__name__}")
        for role, device in self.devices.items():
            _check_role(role, "by_role")
            _check_answer(device, f"by_role[{role!r}]")
        _check_answer(self.default, "by_role default")

    def validate(self, n_experts: Sequence[int]) -> None:
        for part in (self.default, *self.devices.values()):
            check = getattr(part, "validate", None)
            if callable(part) and check is not None:
                check(n_experts)

    def __call__(self, site: MatrixSite) -> Any:
        answer = self.devices.get(site.role, self.default)
        return answer(site) if callable(answer) and not _is_device(answer) else answer


def by_role(devices: Mapping[str, Any], default: Any = DIGITAL) -> RolePlacement:
    """A device per role: ``by_role({"router": "rram-wan2022"}, default="pcm")``.

    Args:
        devices: ``{role: device}``; a device is a config, preset name, YAML path, :data:`DIGITAL`
            or another placement (asked for the sites of that role).
        default: What the roles not in ``devices`` get: a device, :data:`DIGITAL` (the default)
            or a placement, e.g. :func:`default_placement` to override one role of the keywords.

    Raises:
        InputError: an unknown role, or a value that is no device, ``DIGITAL`` or placement.
    """
    return RolePlacement(dict(devices), default)


def as_placement(placement: Any) -> Placement:
    """A placement from a callable or a ``{role: device}`` table (roles not in it stay digital)."""
    if isinstance(placement, Mapping):
        return by_role(placement)
    if callable(placement) and not _is_device(placement):
        return placement
    raise InputError(f"placement must be a function MatrixSite -> device or DIGITAL, or a {{role: device}} table; "
                     f"got {type(placement).__name__} (for one device for everything, pass device_config)")


# ------------------------------------------------------------------ the plan
@dataclass
class PlacementPlan:
    """A placement's answer for every matrix site of one model, devices loaded once each."""

    sites: list[MatrixSite] = field(default_factory=list)
    where: dict[str, int] = field(default_factory=dict)
    """Site name -> index into :attr:`devices`, or ``-1`` for digital."""
    devices: list[Any] = field(default_factory=list)
    """The distinct :class:`~romer_aihwkit.devices.DeviceConfig` objects used, in order of first use."""

    def device(self, name: str) -> Any:
        """The device of site ``name``, or :data:`DIGITAL`."""
        index = self.where[name]
        return DIGITAL if index < 0 else self.devices[index]

    def analog(self, name: str) -> bool:
        return self.where[name] >= 0

    def mixed_banks(self) -> list[str]:
        """Expert banks (one MoE layer's ``gate_up`` or ``down`` matrices) placed on more than one device."""
        banks: dict[str, set[int]] = {}
        for site in self.sites:
            if site.role == "expert" and self.where[site.name] >= 0:
                bank = site.name.rsplit(".", 2)[0] + "." + site.name.rsplit(".", 1)[1]
                banks.setdefault(bank, set()).add(self.where[site.name])
        return sorted(bank for bank, used in banks.items() if len(used) > 1)

    def keywords(self) -> tuple[dict[str, Any], bool]:
        """The keywords that describe this plan, and whether they (on :attr:`devices` ``[0]``) place exactly the same.

        The keywords: ``analog_router`` (some router analog), ``analog_attention`` (some attention
        projection analog), ``digital_experts`` (``{layer: [experts]}`` with every matrix digital).
        Not exact: several devices, some routers (or attention projections) analog and others
        digital, a digital shared expert, or an expert with one matrix analog and one digital.
        """
        roles: dict[str, set[bool]] = {role: set() for role in ROLES}
        experts: dict[tuple[int, int], set[bool]] = {}
        for site in self.sites:
            analog = self.analog(site.name)
            roles[site.role].add(analog)
            if site.role == "expert" and site.layer is not None and site.expert is not None:
                experts.setdefault((site.layer, site.expert), set()).add(analog)
        digital: dict[int, list[int]] = {}
        for (layer, expert), kinds in sorted(experts.items()):
            if kinds == {False}:
                digital.setdefault(layer, []).append(expert)
        words = {"analog_router": True in roles["router"], "analog_attention": True in roles["attention"],
                 "digital_experts": digital}
        uniform = [roles[role] for role in ("router", "attention")] + list(experts.values())
        exact = len(self.devices) <= 1 and all(len(v) <= 1 for v in uniform) and False not in roles["shared_expert"]
        return words, exact

    def summary(self) -> dict[str, dict[str, int]]:
        """``{role: {device name or "digital": matrices}}``."""
        out: dict[str, dict[str, int]] = {}
        for site in self.sites:
            index = self.where[site.name]
            label = "digital" if index < 0 else str(self.devices[index].name)
            counts = out.setdefault(site.role, {})
            counts[label] = counts.get(label, 0) + 1
        return out

    def record(self) -> dict[str, Any]:
        """JSON-ready description: the per-role summary and a digest of every matrix's device content
        (:meth:`~romer_aihwkit.devices.DeviceConfig.content_hash`)."""
        contents = [d.content_hash() for d in self.devices]
        rows = sorted((name, "digital" if i < 0 else contents[i]) for name, i in self.where.items())
        digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
        return {"roles": self.summary(), "digest": digest}

    def main_device(self) -> Any:
        """The device holding the most analog matrices (the first used on ties), or ``None``."""
        counts = [0] * len(self.devices)
        for index in self.where.values():
            if index >= 0:
                counts[index] += 1
        return self.devices[counts.index(max(counts))] if counts else None


class _Resolver:
    """Loads each distinct device answer once (configs by identity, names and paths by text)."""

    def __init__(self) -> None:
        self.devices: list[Any] = []
        self._index: dict[Any, int] = {}

    def __call__(self, answer: Any, site: MatrixSite) -> int:
        if answer is DIGITAL:
            return -1
        if _is_device(answer):
            key: Any = ("id", id(answer))
        elif isinstance(answer, (str, os.PathLike)):
            key = ("name", os.fspath(answer))
        else:
            raise InputError(f"placement answered {answer!r} ({type(answer).__name__}) for {site.role} matrix "
                             f"{site.name!r}; answer a DeviceConfig, a preset name or YAML path, or DIGITAL")
        if key not in self._index:
            try:
                config = answer if key[0] == "id" else load_device_config(answer)
            except (FileNotFoundError, ValueError) as exc:
                raise InputError(f"placement answered device {answer!r} for {site.role} matrix {site.name!r}, "
                                 f"which does not load: {exc}") from exc
            same = next((i for i, d in enumerate(self.devices) if d is config), None)
            if same is None:
                self.devices.append(config)
                same = len(self.devices) - 1
            self._index[key] = same
        return self._index[key]


def plan_placement(placement: Placement, sites: Iterable[MatrixSite], n_experts: Sequence[int],
                   loaded: Mapping[str, Any] | None = None) -> PlacementPlan:
    """Ask ``placement`` about every site, once each; load each distinct device once.

    Args:
        placement: The placement (any callable; helper placements are also checked against the model).
        sites: Every matrix site of the model.
        n_experts: Experts per MoE layer (to check layer and expert numbers the placement names).
        loaded: Devices already loaded, by the name or path they were loaded from (not loaded again).

    Raises:
        InputError: a placement that names an unknown role, a layer or expert out of range, or
            answers something that is no device or a device that does not load.
    """
    check = getattr(placement, "validate", None)
    if check is not None:
        check(n_experts)
    resolve = _Resolver()
    for text, config in (loaded or {}).items():
        resolve.devices.append(config)
        resolve._index[("name", text)] = resolve._index[("id", id(config))] = len(resolve.devices) - 1
    plan = PlacementPlan()
    for site in sites:
        if site.name in plan.where:
            raise InputError(f"two weight matrices are named {site.name!r}; a placement cannot tell them apart")
        plan.sites.append(site)
        plan.where[site.name] = resolve(placement(site), site)
    used = list(dict.fromkeys(i for i in plan.where.values() if i >= 0))  # in order of first use
    remap = {old: new for new, old in enumerate(used)}
    plan.devices = [resolve.devices[i] for i in used]
    plan.where = {name: remap.get(i, -1) for name, i in plan.where.items()}
    return plan
