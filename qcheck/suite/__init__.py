"""The invariant test modules, shipped in the package: `pytest --pyargs qcheck.suite` or `qcheck run`."""
