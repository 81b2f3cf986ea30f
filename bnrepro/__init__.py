"""bnrepro: the package behind the executable book on batch normalization."""

__version__ = "0.1.0"
