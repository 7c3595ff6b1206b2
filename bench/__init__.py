"""Benchmarks of the engine: ``python -m bench search ...`` (see bench/RESULTS.md)."""
