"""bnrepro.nn."""
