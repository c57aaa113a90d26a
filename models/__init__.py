"""segrt's demo models (``nuclei.onnx``, ``instruments.onnx``) and the scripts that train them;
see README.md in this folder for the model cards."""
