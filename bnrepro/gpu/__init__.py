"""bnrepro.gpu."""
