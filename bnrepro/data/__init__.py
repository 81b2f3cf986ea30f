"""bnrepro.data."""
