"""Measurements: one module per measurement, each taking a model (and the reference where it compares) and
returning results as data that round-trip through the record store (`qcheck.records`)."""
