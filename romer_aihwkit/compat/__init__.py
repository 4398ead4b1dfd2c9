"""One module per third-party library whose private internals we use; each function fails loudly (the
package's error type naming the library version) when the internal changed."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

__all__ = ["changed_message", "installed_version"]


def installed_version(distribution: str, missing: str = "not installed") -> str:
    """The installed version of ``distribution`` (``missing`` when it has no metadata)."""
    try:
        return _version(distribution)
    except PackageNotFoundError:
        return missing


def changed_message(library: str, version: str, what: str, detail: object, supported: str, verb: str = "uses") -> str:
    """The message of an error raised because ``library`` no longer has the internal ``what``."""
    return (f"{library} {version} changed {what} ({detail}); romer-aihwkit {verb} it as in {supported}: "
            f"install a supported version (pip install '{supported}')")
