"""segrt: an edge-deployable compiled inference engine for medical image segmentation.

Layers (imports only point down): ``segrt.bench`` -> ``segrt.export`` -> ``segrt.engine``
-> ``segrt.kernels``. Importing ``segrt`` is cheap: heavy optional packages (torch, cupy,
tensorrt, stardist) and the compiled extension load on first use.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
