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
    "highdicom": ("highdicom", "io"),
    "torch": ("torch", "export"),
    "onnxslim": ("onnxslim", "export"),
    "tensorrt": ("tensorrt", "trt"),
    "cupy": ("cupy-cuda12x", "gpu"),
    "cupyx": ("cupy-cuda12x", "gpu"),
    "numba": ("numba-cuda", "gpu"),
    "pyclipper": ("pyclipper", "test"),
    "stardist": ("stardist", "peers"),
    "cc3d": ("connected-components-3d", "peers"),
    "skimage": ("scikit-image", "peers"),
    "monai": ("monai", "peers"),
    "nnunetv2": ("nnunetv2", "import"),
    "zarr": ("zarr", "batch"),
    "pytriton": ("nvidia-pytriton", "serve"),
}

_cache: dict[str, ModuleType] = {}


def _without_openvino_telemetry() -> None:
    """OpenVINO's Python package sends a usage event to Google Analytics when it is imported
    (``openvino.tools.ovc``, from a forked child) and writes a client id under ``~/intel``.
    segrt makes no network connection at run time: with ``openvino_telemetry`` unimportable,
    OpenVINO falls back to its own no-op stub (``openvino.tools.ovc.telemetry_stub``). Nothing
    in the user's home is read or written. A process that imported openvino_telemetry itself
    keeps it."""
    import sys

    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # an ImportError for whoever imports it


def _without_onnxruntime_telemetry() -> None:
    """ONNX Runtime writes a device id under ``~/.cache/Microsoft/DeveloperTools`` when it is
    imported, for its telemetry; ``ORT_DISABLE_TELEMETRY=1`` (its own switch, read at import)
    stops that. A value the user set is kept."""
    import os

    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


# called before the module is first imported
_BEFORE_IMPORT = {"openvino": _without_openvino_telemetry, "onnxruntime": _without_onnxruntime_telemetry}


def install_hint(name: str) -> str:
    """How to install the package that provides module ``name``."""
    dist, extra = PACKAGES.get(name.split(".")[0], (name.split(".")[0], None))
    if extra == "gpu":  # CuPy is built per CUDA major version
        return "pip install 'segrt[gpu]' (CUDA 12) or 'segrt[gpu-cuda13]' (CUDA 13)"
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
    prepare = _BEFORE_IMPORT.get(name.split(".")[0])
    if prepare is not None:
        prepare()
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
