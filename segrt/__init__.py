"""segrt: an edge-deployable compiled inference engine for medical image segmentation.

Layers (imports only point down; tests/test_layers.py checks it): ``segrt.kernels`` <
``segrt.engine`` < ``segrt.export`` < ``segrt.bench``; this package (CLI, demo) on top.
Importing ``segrt`` is cheap: the public entries below, heavy optional packages (torch, cupy,
tensorrt, stardist) and the compiled extension load on first use.

    segrt.load(path, backend="auto")           a model on the fastest backend here
    segrt.sliding_window(image, roi, predictor) MONAI-equal sliding-window inference
    segrt.VolumePipeline / InstancePipeline / VideoPipeline
"""
from segrt import _checkout

if not _checkout.resolve(__file__):
    import importlib as _importlib

    from segrt._version import __version__

    _LAZY = {"load": "segrt.engine", "sliding_window": "segrt.engine", "VolumePipeline": "segrt.engine",
             "InstancePipeline": "segrt.engine", "VideoPipeline": "segrt.engine"}
    __all__ = ["__version__", *_LAZY]

    def __getattr__(name):
        if name in _LAZY:
            return getattr(_importlib.import_module(_LAZY[name]), name)
        raise AttributeError(f"module 'segrt' has no attribute {name!r}")

    def __dir__():
        return sorted(set(globals()) | set(_LAZY))
