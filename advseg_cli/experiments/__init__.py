"""Experiments: runs of the stage functions that measure something, with results.json, plots and a table."""
