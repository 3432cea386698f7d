"""Benchmarks: measured against their own local stack; run with ``make bench``."""
