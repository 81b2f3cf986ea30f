"""bnrepro.chapters."""
