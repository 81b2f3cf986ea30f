"""bnrepro.core."""
