"""Benchmarks (not part of the installed package): ``python benchmarks/throughput.py --help``."""
