"""The root folders that become ``segrt.<name>``: read by setup.py and by the source-checkout shim."""
SUBPACKAGES = ("kernels", "engine", "export", "bench", "models")
