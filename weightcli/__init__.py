"""weightcli: weight surgery on saved TensorFlow/Keras models."""

__version__ = "0.1.0"
