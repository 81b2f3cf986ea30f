"""bnrepro.training."""
