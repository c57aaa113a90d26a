"""Lazy imports of optional heavy dependencies.

``optional_import("cupy")`` returns the module, importing it on first call; a missing module
raises an ImportError that names the module, the original error and how to install it: the
pip extra that brings it (``PACKAGES`` lists which, checked against pyproject.toml by the
tests), or, for segrt's own dependencies, the package to reinstall.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optional_import", "is_available", "PACKAGES"]

# top-level module -> (distribution on PyPI, extra of segrt that installs it; None: a core dependency)
PACKAGES = {
    "numpy": ("numpy", None),
    "scipy": ("scipy", None),
    "onnx": ("onnx", None),
    "onnxruntime": ("onnxruntime", None),
    "openvino": ("openvino", None),
    "cv2": ("opencv-python-headless", None),
    "nibabel": ("nibabel", "io"),
    "pydicom": ("pydicom", "io"),
    "tifffile": ("tifffile", "io"),
    "torch": ("torch", "export"),
    "onnxslim": ("onnxslim", "export"),
    "tensorrt": ("tensorrt", "trt"),
    "cupy": ("cupy-cuda12x", "gpu"),
    "pyclipper": ("pyclipper", "test"),
    "stardist": ("stardist", "peers"),
    "cc3d": ("connected-components-3d", "peers"),
    "skimage": ("scikit-image", "peers"),
    "monai": ("monai", "peers"),
}

_cache: dict[str, ModuleType] = {}


def install_hint(name: str) -> str:
    """How to install the package that provides module ``name``."""
    dist, extra = PACKAGES.get(name.split(".")[0], (name.split(".")[0], None))
    if extra:
        return f"pip install 'segrt[{extra}]'"
    if name.split(".")[0] in PACKAGES:
        return f"pip install {dist} (one of segrt's own dependencies: the installation is incomplete)"
    return f"pip install {dist}"


def optional_import(name: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``name`` now, or raise an ImportError that says how to install it.

    extra: only for modules missing from ``PACKAGES``; listed modules take their extra from there."""
    mod = _cache.get(name)
    if mod is not None:
        return mod
    try:
        mod = importlib.import_module(name)
    except ImportError as err:
        what = f" for {purpose}" if purpose else ""
        hint = install_hint(name) if name.split(".")[0] in PACKAGES or not extra else f"pip install 'segrt[{extra}]'"
        raise ImportError(
            f"segrt needs the package '{name}'{what}, but importing it failed: {err}. Install it with: {hint}"
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
