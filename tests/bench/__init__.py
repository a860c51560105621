"""Benchmarks: `make bench` runs every `bench_*.py` here and writes docs/benchmarks.md.

Each module exposes `run() -> str`, returning one Markdown section (a `## ` title, what
is compared, a table of medians/percentiles, the ratio against the baseline measured in
the same run, and the target). Timings are never asserted; they are reported.
"""
