"""relssl: self-supervised representation learning by relations between samples."""

__version__ = "0.1.0"
