"""bnrepro.distributed."""
