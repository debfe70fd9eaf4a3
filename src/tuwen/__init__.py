"""tuwen: image-text joint training."""
__version__ = "0.1.0"
