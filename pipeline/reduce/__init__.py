"""Reducers: merge a run's shards into tables, plots and the transcript log."""
