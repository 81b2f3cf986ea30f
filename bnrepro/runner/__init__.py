"""bnrepro.runner."""
