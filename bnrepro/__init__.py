"""bnrepro: the package behind the executable book on batch normalization."""

from .core.version import __version__

__all__ = ["__version__"]
