"""AutoML compression search for PyTorch models."""

__version__ = "0.1.0"
