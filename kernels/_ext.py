"""Access to the compiled extension ``segrt.kernels._C``.

A failure to load it is remembered with its reason and raised only when a kernel that
needs it is called, so ``import segrt`` never fails because of the build.
"""
from __future__ import annotations

from types import ModuleType

_module: ModuleType | None = None
_error: BaseException | None = None
_tried = False


def _load() -> None:
    global _module, _error, _tried
    _tried = True
    try:
        from segrt.kernels import _C  # noqa: PLC0415
    except Exception as err:  # ImportError, or an undefined symbol at load time
        _error = err
    else:
        _module = _C


def available() -> bool:
    """True when the compiled extension loads."""
    if not _tried:
        _load()
    return _module is not None


def load_error() -> str | None:
    """Why the extension failed to load, or None."""
    if not _tried:
        _load()
    return None if _error is None else f"{type(_error).__name__}: {_error}"


def extension() -> ModuleType:
    """The compiled module; raises ImportError with the original reason when it is missing."""
    if not _tried:
        _load()
    if _module is None:
        raise ImportError(
            "segrt's compiled kernels (segrt.kernels._C) could not be loaded: "
            f"{load_error()}. Rebuild them with `pip install -e .` (needs a C++17 compiler), "
            "or call the op with device='reference' for the slow pure-Python version."
        ) from _error
    return _module
