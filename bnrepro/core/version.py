"""The package's version, kept in the lowest tier so that provenance can stamp it on every
result without importing the top package (which gathers every tier)."""

__version__ = "0.1.0"
