"""Reading device configs: presets by name, YAML files (size, UTF-8, depth and alias limits), ``extends:`` chains.

Each distinct file is parsed once per process: :func:`load_device_config` keeps the validated
config keyed by the resolved path and content hash of every file of its ``extends:`` chain, so a
second load of an unchanged file returns the same (frozen) :class:`DeviceConfig` and an edited file
is read again.
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Any

from ..errors import DeviceConfigError, InputError
from .schema import DeviceConfig, _quote, _show

__all__ = [
    "MAX_EXTENDS_CHAIN",
    "MAX_YAML_BYTES",
    "MAX_YAML_DEPTH",
    "PRESET_DIR",
    "clear_device_config_cache",
    "list_device_configs",
    "load_device_config",
]

PRESET_DIR = Path(__file__).resolve().parent.parent / "device_configs"
"""Folder holding the preset YAML files (package data)."""

MAX_YAML_BYTES = 64 * 1024
"""Largest device-config YAML file read (a full config is about 2 KiB)."""

MAX_YAML_DEPTH = 4
"""Deepest nesting of mappings/lists accepted in a device-config YAML (a config needs 2)."""

MAX_EXTENDS_CHAIN = 8
"""Longest chain of ``extends:`` files."""

_Chain = tuple[tuple[Path, str], ...]
"""``(resolved path, sha256 of the bytes)`` of every file a config was read from, the file itself first."""

_CACHE: dict[tuple[Path, str], tuple[_Chain, DeviceConfig]] = {}
"""Validated configs by (resolved path, the file name it was opened by: a config without ``name``
is named after it), with the chain they were read from (its hashes checked on every hit)."""

_MAX_CACHED = 256
"""Most files kept (a comparison names a handful; the oldest entry goes first)."""


def clear_device_config_cache() -> None:
    """Forget every parsed device config (the next load reads its files again)."""
    _CACHE.clear()


def _file_digest(path: Path) -> str | None:
    """sha256 of the file's bytes (``None`` when it cannot be read or is over the size limit: no caching)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError:
        return None
    return None if len(raw) > MAX_YAML_BYTES else hashlib.sha256(raw).hexdigest()


def _cached(key: tuple[Path, str]) -> DeviceConfig | None:
    """The config read from ``key`` before, if no file of its ``extends:`` chain changed since."""
    hit = _CACHE.get(key)
    if hit is None:
        return None
    chain, config = hit
    if all(_file_digest(path) == digest for path, digest in chain):
        return config
    del _CACHE[key]
    return None


def list_device_configs() -> list[str]:
    """Sorted names of the preset device configs shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_device_config(name_or_path: str | Path | DeviceConfig) -> DeviceConfig:
    """Load a preset by name, a YAML file, or pass a :class:`DeviceConfig` through.

    A YAML file holds :class:`DeviceConfig` fields; ``extends: NAME_OR_RELATIVE_PATH`` starts from
    a preset or another file (relative to this one) and the file's fields override it. Without
    ``name`` the file's stem is used.

    Args:
        name_or_path: Preset name (see :func:`list_device_configs`), path to a ``.yaml`` file, or
            a ready config.

    Returns:
        The validated config. It is frozen, and the same object for every load of an unchanged
        file in this process (parsed once; see :func:`clear_device_config_cache`).

    Raises:
        InputError: (a ``ValueError``) Unknown preset name (the message lists the presets), or an
            ``extends:`` that is absolute or leaves the file's folder.
        FileNotFoundError: A path that does not exist.
        DeviceConfigError: Invalid YAML, unknown field or bad value (names the field and file).
    """
    if isinstance(name_or_path, DeviceConfig):
        return name_or_path
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(
            f"expected a preset name, a path or a DeviceConfig, got {type(name_or_path).__name__}"
        )
    path = _resolve(name_or_path, base_dir=None)
    key = (path.resolve(), path.name)
    config = _cached(key)
    if config is not None:
        return config
    chain: list[tuple[Path, str]] = []
    data = _read_resolved(path, stack=(), chain=chain)
    config = DeviceConfig.from_dict(data, path=path)
    if all(digest for _, digest in chain):
        while len(_CACHE) >= _MAX_CACHED:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = (tuple(chain), config)
    return config


def _resolve(name_or_path: str | Path, base_dir: Path | None) -> Path:
    """Map a preset name or a path to an existing file path.

    With ``base_dir`` (an ``extends:`` inside a file) only preset names and relative paths that stay
    inside ``base_dir`` are accepted.
    """
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or any(
        s in text for s in ("/", "\\")
    ) or text.endswith((".yaml", ".yml"))
    if not looks_like_path:
        preset = PRESET_DIR / f"{text}.yaml"
        if preset.is_file():
            return preset
        local = (base_dir or Path.cwd()) / text
        if local.is_file() and base_dir is None:
            return local
        known = ", ".join(list_device_configs())
        hint = difflib.get_close_matches(text, list_device_configs(), n=1)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise InputError(
            f"unknown device config {_quote(text)}.{did_you_mean} Known presets: {known}; "
            "or pass the path to a YAML file."
        )
    path = Path(text).expanduser()
    if base_dir is not None:
        if path.is_absolute() or text.startswith("~"):
            raise InputError(f"must be a preset name or a path relative to the file's folder, got the "
                             f"absolute path {_quote(text)}")
        path = base_dir / path
        try:
            path.resolve().relative_to(base_dir.resolve())
        except ValueError:
            raise InputError(f"{_quote(text)} points outside the file's folder {base_dir}; copy the "
                             "base config next to it or extend a preset") from None
        if path.suffix not in (".yaml", ".yml"):
            raise InputError(f"{_quote(text)} is not a .yaml/.yml file")
    if not path.is_file():
        raise FileNotFoundError(f"device config file not found: {path}")
    return path


def _read_yaml_text(path: Path) -> str:
    """The file's text, refused before parsing if too large, not UTF-8 or not a plain file."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DeviceConfigError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    if size > MAX_YAML_BYTES:
        raise DeviceConfigError(f"file is {size} bytes; a device config is at most {MAX_YAML_BYTES} bytes",
                                path=path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise DeviceConfigError(f"cannot read the file: {exc.strerror or exc}", path=path) from None
    if len(raw) > MAX_YAML_BYTES:
        raise DeviceConfigError(f"file is larger than {MAX_YAML_BYTES} bytes", path=path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DeviceConfigError(f"not UTF-8 text (invalid byte at offset {exc.start}); save the file as UTF-8",
                                path=path) from None


def _check_yaml_structure(text: str, path: Path) -> None:
    """Refuse anchors/aliases (billion laughs) and deep nesting by scanning tokens, before parsing."""
    import yaml

    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.AnchorToken, yaml.AliasToken)):
                raise DeviceConfigError(
                    f"YAML anchors and aliases (&/*) are not accepted (line {token.start_mark.line + 1}); write "
                    "the values out", path=path)
            if isinstance(token, (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken,
                                  yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise DeviceConfigError(
                        f"nested deeper than {MAX_YAML_DEPTH} levels (line {token.start_mark.line + 1}); a device "
                        "config is a flat mapping of fields", path=path)
            elif isinstance(token, (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise DeviceConfigError(f"not valid YAML: {_yaml_problem(exc)}", path=path) from None


def _unique_key_loader() -> type:
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML would keep the last)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise DeviceConfigError(f"duplicate key (line {line}; first on line {first}): each field once",
                                            field=str(key))
                seen[key] = line
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


class _LazyLoader:
    """The duplicate-key loader, built on first use (PyYAML is imported lazily)."""

    _cls: type | None = None

    def __call__(self, stream: Any) -> Any:
        if _LazyLoader._cls is None:
            _LazyLoader._cls = _unique_key_loader()
        return _LazyLoader._cls(stream)


_UniqueKeyLoader = _LazyLoader()


def _yaml_problem(exc: Exception) -> str:
    """A YAML error in one short line: the problem and where, never the file's content."""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or type(exc).__name__
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"


def _read_resolved(path: Path, stack: tuple[Path, ...], chain: list[tuple[Path, str]] | None = None) -> dict[str, Any]:
    """Read ``path`` and merge it over whatever it ``extends``, recursively; each file read is
    appended to ``chain`` with the hash of the text parsed."""
    import yaml

    real = path.resolve()
    if real in stack:
        cycle = " -> ".join(str(p) for p in (*stack, real))
        raise DeviceConfigError(f"circular 'extends': {cycle}", field="extends", path=path)
    if len(stack) >= MAX_EXTENDS_CHAIN:
        raise DeviceConfigError(f"more than {MAX_EXTENDS_CHAIN} files in the 'extends' chain", field="extends",
                                path=path)
    text = _read_yaml_text(path)
    if chain is not None:
        chain.append((real, hashlib.sha256(text.encode("utf-8")).hexdigest()))
    _check_yaml_structure(text, path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise DeviceConfigError(f"not valid YAML: {_yaml_problem(exc)}", path=path) from None
    except DeviceConfigError as exc:
        raise exc.with_path(path) from None
    if data is None or data == {}:
        raise DeviceConfigError("the file holds no fields; a device config needs at least 'extends: PRESET' or the "
                                "device's fields (an empty file would be a noise-free chip)", path=path)
    if not isinstance(data, dict):
        raise DeviceConfigError(f"must be a mapping of fields, got {_show(data)}", path=path)
    data = dict(data)
    parent = data.pop("extends", None)
    if "name" not in data:
        data["name"] = path.stem
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise DeviceConfigError(f"must be a preset name or a relative path, got {_show(parent)}",
                                field="extends", path=path)
    try:
        parent_path = _resolve(parent, base_dir=path.parent)
    except (ValueError, FileNotFoundError) as exc:
        raise DeviceConfigError(str(exc), field="extends", path=path) from None
    base = _read_resolved(parent_path, stack=(*stack, real), chain=chain)
    merged = {**base, **data}
    if isinstance(base.get("input_range"), dict) and isinstance(data.get("input_range"), dict):
        merged["input_range"] = {**base["input_range"], **data["input_range"]}
    return merged

