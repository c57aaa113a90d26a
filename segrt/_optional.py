"""Lazy imports of optional heavy dependencies.

``optional_import("cupy", extra="gpu")`` returns the module, importing it on first call; a
missing module raises an ImportError that names the module, the original error and the pip
extra that provides it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional_import", "is_available"]

_cache: dict[str, ModuleType] = {}


def optional_import(name: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``name`` now, or raise an ImportError that says how to install it."""
    mod = _cache.get(name)
    if mod is not None:
        return mod
    try:
        mod = importlib.import_module(name)
    except ImportError as err:
        what = f" for {purpose}" if purpose else ""
        hint = f"pip install 'segrt[{extra}]'" if extra else f"pip install {name.split('.')[0]}"
        raise ImportError(
            f"segrt needs the optional package '{name}'{what}, but importing it failed: {err}. "
            f"Install it with: {hint}"
        ) from err
    _cache[name] = mod
    return mod


def is_available(name: str) -> bool:
    """True when ``name`` can be imported (imports it; use only where that is acceptable)."""
    try:
        optional_import(name)
        return True
    except ImportError:
        return False
