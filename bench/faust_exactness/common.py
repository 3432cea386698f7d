"""Constants and types shared by the experiment's worker and driver."""

from __future__ import annotations

from pathlib import Path

COMMAND = "python -m bench.faust_exactness --bootstrap HOST:PORT"
WINDOW_S = 60
TENANTS = ("acme", "globex", "initech", "umbrella")
TEMPLATES = ("summarise", "classify", "extract", "translate", "chat")
MODELS = ("gpt-sim-small", "gpt-sim-large", "smollm2")
WORK_ROOT = Path("/tmp/faustprobe/runs")

Totals = dict[tuple[str, int], tuple[int, int, int]]  # (agg key, window start) -> sums
