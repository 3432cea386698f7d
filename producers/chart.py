"""``report --chart``: throughput, cost and latency over time, as a PNG.

Three panels share the time axis (one point per window): completions and failures per
minute, cost per minute, both with one line per group (the ``--by`` dimensions, the
largest few), and latency p50/p95 over every group merged. matplotlib is an optional
dependency (``pip install 'promptmill[chart]'``); without it the command says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from producers.reports import ReportRow, group_reports
from schemas import PromptmillError, WindowReport

MAX_LINES = 6


class ChartUnavailable(PromptmillError):
    """matplotlib is not installed."""


def write_chart(reports: Sequence[WindowReport], by: Sequence[str], path: Path) -> None:
    """Draw the reports' windows to ``path`` (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartUnavailable(
            "--chart needs matplotlib: pip install 'promptmill[chart]'"
        ) from None
    if not reports:
        raise PromptmillError("no report windows in the time range: nothing to chart")
    per_minute = 60 / reports[0].window_seconds
    series = _series(group_reports(reports, by, per_window=True), by)
    overall = group_reports(reports, [], per_window=True)
    times = [datetime.fromisoformat(row.group["window"]) for row in overall]

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for label, points in series:
        xs = [t for t, _ in points]
        top.plot(xs, [r.completions * per_minute for _, r in points], marker=".", label=label)
        middle.plot(xs, [r.cost_usd * per_minute for _, r in points], marker=".", label=label)
    failed = [row.failed * per_minute for row in overall]
    if any(failed):
        top.plot(times, failed, color="red", linestyle="--", label="failures (all)")
    top.set_ylabel("completions / min")
    middle.set_ylabel("cost USD / min")
    bottom.plot(times, [row.p50_ms or 0 for row in overall], marker=".", label="p50")
    bottom.plot(times, [row.p95_ms or 0 for row in overall], marker=".", label="p95")
    bottom.set_ylabel("model latency ms")
    bottom.set_xlabel("window start (UTC)")
    half = timedelta(seconds=reports[0].window_seconds / 2)
    bottom.set_xlim(times[0] - half, times[-1] + half)  # one window: no years-wide axis
    fmt = "%m-%d %H:%M" if reports[0].window_seconds >= 60 else "%H:%M:%S"
    bottom.xaxis.set_major_formatter(mdates.DateFormatter(fmt))  # type: ignore[no-untyped-call]
    for axes in (top, middle, bottom):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small", loc="upper left")
    top.set_title(f"promptmill report: {len(overall)} window(s), by {', '.join(by) or 'all'}")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _series(
    rows: Sequence[ReportRow], by: Sequence[str]
) -> list[tuple[str, list[tuple[datetime, ReportRow]]]]:
    """One time series per group, the largest ``MAX_LINES`` by requests."""
    groups: dict[str, list[tuple[datetime, ReportRow]]] = defaultdict(list)
    for row in rows:
        label = " ".join(row.group[dim] for dim in by) or "all"
        groups[label].append((datetime.fromisoformat(row.group["window"]), row))
    ranked = sorted(groups.items(), key=lambda item: -sum(r.requests for _, r in item[1]))
    return ranked[:MAX_LINES]
