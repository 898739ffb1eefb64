"""Benchmarks and quality tools, each run as python -m tasks.bench.NAME."""
