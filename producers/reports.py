"""Reading usage reports: the latest revision of every window, grouped as asked.

The reports topic holds a window's running totals each time they changed; a reader keeps
the highest ``revision`` per window key, drops windows that started before ``--since``,
and sums the rest by the dimensions asked for (tenant, template, model, and optionally
the window itself). Latency histograms merge bucket by bucket, so the p50/p95 of a group
are exact to the bucket, not an average of percentiles.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from schemas import WindowReport, decode
from schemas.reports import merge_histograms, percentile
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.partitions import read_to_end, topic_partitions

DIMENSIONS = ("tenant", "template", "model", "group", "deployment")
SKEW = timedelta(minutes=5)  # report records are stamped after their window starts


async def read_reports(
    conn: KafkaConnection, catalog: TopicCatalog, since: timedelta | None
) -> list[WindowReport]:
    """The latest revision of every window that started within ``since`` (all if ``None``)."""
    cutoff = datetime.now(UTC) - since if since is not None else None
    consumer = AIOKafkaConsumer(
        **conn.client_options(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, catalog.name(TopicKind.REPORTS))
        consumer.assign(tps)
        if cutoff is None:
            await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        if cutoff is not None:
            stamp = int((cutoff - SKEW).timestamp() * 1000)
            found = await consumer.offsets_for_times({tp: stamp for tp in tps})
            for tp in tps:
                hit = found.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else ends[tp])
        latest: dict[str, WindowReport] = {}
        async for record in read_to_end(consumer, tps, ends):
            report = _report(record.value)
            if report is None:
                continue
            known = latest.get(report.key)
            if known is None or report.revision > known.revision:
                latest[report.key] = report
    finally:
        await consumer.stop()
    reports = sorted(latest.values(), key=lambda r: (r.window_start, r.key))
    if cutoff is None:
        return reports
    return [r for r in reports if r.window_start + timedelta(seconds=r.window_seconds) > cutoff]


def _report(value: bytes | None) -> WindowReport | None:
    try:
        return decode(value or b"", WindowReport)
    except (ValidationError, orjson.JSONDecodeError):
        return None


@dataclass
class ReportRow:
    """The sum of some windows' reports."""

    group: dict[str, str]
    requests: int = 0
    completions: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    histogram: dict[float, int] = field(default_factory=dict)
    evaluated: int = 0  # completions graded by their template's online checks
    eval_passed: int = 0
    eval_score_sum: float = 0.0
    assertion_counts: dict[str, int] = field(default_factory=dict)
    assertion_passes: dict[str, int] = field(default_factory=dict)

    @property
    def pass_rate(self) -> float | None:
        return self.eval_passed / self.evaluated if self.evaluated else None

    @property
    def mean_score(self) -> float | None:
        return self.eval_score_sum / self.evaluated if self.evaluated else None

    def assertion_rates(self) -> dict[str, float]:
        return {
            kind: round(self.assertion_passes.get(kind, 0) / count, 4)
            for kind, count in sorted(self.assertion_counts.items())
            if count
        }

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.histogram, 0.5)

    @property
    def p95_ms(self) -> float | None:
        return percentile(self.histogram, 0.95)

    def add(self, report: WindowReport) -> None:
        self._sum(report, report.latency_histogram)

    def merge(self, row: ReportRow) -> None:
        self._sum(row, row.histogram)

    def _sum(self, other: WindowReport | ReportRow, histogram: dict[float, int]) -> None:
        self.requests += other.requests
        self.completions += other.completions
        for code, count in other.failures.items():
            self.failures[code] = self.failures.get(code, 0) + count
        self.cache_hits += other.cache_hits
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd
        self.histogram = merge_histograms([self.histogram, histogram])
        self.evaluated += other.evaluated
        self.eval_passed += other.eval_passed
        self.eval_score_sum += other.eval_score_sum
        for mine, theirs in (
            (self.assertion_counts, other.assertion_counts),
            (self.assertion_passes, other.assertion_passes),
        ):
            for kind, count in theirs.items():
                mine[kind] = mine.get(kind, 0) + count

    def as_dict(self) -> dict[str, object]:
        return {
            **self.group,
            "requests": self.requests,
            "completions": self.completions,
            "failed": self.failed,
            "failures": dict(sorted(self.failures.items())),
            "cache_hits": self.cache_hits,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "latency_p50_ms": self.p50_ms,
            "latency_p95_ms": self.p95_ms,
            "evaluated": self.evaluated,
            "eval_pass_rate": None if self.pass_rate is None else round(self.pass_rate, 4),
            "eval_mean_score": None if self.mean_score is None else round(self.mean_score, 4),
            "assertion_pass_rates": self.assertion_rates(),
        }


def group_reports(
    reports: Iterable[WindowReport], by: Sequence[str], *, per_window: bool = False
) -> list[ReportRow]:
    """Sum the reports by the dimensions ``by`` (and by window when ``per_window``)."""
    rows: dict[tuple[str, ...], ReportRow] = {}
    for report in reports:
        group = {"window": report.window_start.isoformat()} if per_window else {}
        group |= {dim: str(getattr(report, dim)) for dim in by}
        row = rows.setdefault(tuple(group.values()), ReportRow(group))
        row.add(report)
    return [rows[key] for key in sorted(rows)]


def render(rows: Sequence[ReportRow], fmt: str) -> str:
    """The rows as an aligned ``table``, ``json`` (one array) or ``csv``."""
    if fmt == "json":
        return orjson.dumps([row.as_dict() for row in rows], option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        out = io.StringIO()
        records = [_flat(row) for row in rows]
        columns = list(records[0]) if records else ["requests"]
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return out.getvalue().rstrip("\n")
    return _table(rows)


def _flat(row: ReportRow) -> dict[str, object]:
    flat = row.as_dict()
    flat["failures"] = " ".join(f"{k}={v}" for k, v in sorted(row.failures.items()))
    flat["assertion_pass_rates"] = " ".join(f"{k}={v}" for k, v in row.assertion_rates().items())
    return flat


_COLUMNS = (
    "REQUESTS",
    "COMPLETED",
    "FAILED",
    "CACHED",
    "PROMPT_TOK",
    "COMPL_TOK",
    "COST_USD",
    "P50_MS",
    "P95_MS",
    "FAILURES",
)


_EVAL_COLUMNS = ("EVALS", "PASS_RATE", "SCORE")  # shown when any row was evaluated


def _cells(row: ReportRow, evals: bool = False) -> list[str]:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"

    def share(value: float | None, percent: bool) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.1f}%" if percent else f"{value:.3f}"

    graded = [str(row.evaluated), share(row.pass_rate, True), share(row.mean_score, False)]
    return [
        *row.group.values(),
        str(row.requests),
        str(row.completions),
        str(row.failed),
        str(row.cache_hits),
        str(row.prompt_tokens),
        str(row.completion_tokens),
        f"{row.cost_usd:.6f}",
        ms(row.p50_ms),
        ms(row.p95_ms),
        *(graded if evals else []),
        " ".join(f"{k}={v}" for k, v in sorted(row.failures.items())) or "-",
    ]


def _table(rows: Sequence[ReportRow]) -> str:
    names = [name.upper() for name in rows[0].group] if rows else []
    evals = any(row.evaluated for row in rows)
    body = [_cells(row, evals) for row in rows]
    if len(rows) > 1:
        total = ReportRow({name: "" for name in rows[0].group})
        for row in rows:
            total.merge(row)
        if names:
            total.group[next(iter(total.group))] = "TOTAL"
        body.append(_cells(total, evals))
    columns = [*_COLUMNS[:-1], *(_EVAL_COLUMNS if evals else ()), _COLUMNS[-1]]
    header = [*names, *columns]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    numeric = range(len(names), len(header) - 1)
    lines = []
    for line in [header, *body]:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
