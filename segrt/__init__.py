"""segrt: an edge-deployable compiled inference engine for medical image segmentation.

Layers (imports only point down): ``segrt.bench`` -> ``segrt.export`` -> ``segrt.engine``
-> ``segrt.kernels``. Importing ``segrt`` is cheap: heavy optional packages (torch, cupy,
tensorrt, stardist) and the compiled extension load on first use.
"""
from segrt import _checkout

if not _checkout.resolve(__file__):
    __version__ = "0.1.0"
    __all__ = ["__version__"]
