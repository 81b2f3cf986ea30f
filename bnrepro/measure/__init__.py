"""bnrepro.measure."""
