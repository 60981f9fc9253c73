"""CALR: camera-aware label refinement for unsupervised person re-identification."""

__version__ = "0.1.0"
