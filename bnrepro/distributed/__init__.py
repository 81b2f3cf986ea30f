"""Processes: launching them (`launch`), and the data-parallel session a process trains in (`parallel`).
What runs in them (an experiment, its stored result) is the runner's."""
