"""Report windows: histogram percentiles, grouping, rendering, and the Redis hash mapping."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import orjson
import pytest

from processors.reporting import _count_args, window_report
from producers.reports import group_reports, render
from schemas import Completion, Failure, Stage, Usage, WindowReport, decode, encode
from schemas.errors import ErrorCode
from schemas.reports import (
    LATENCY_BOUNDS_MS,
    latency_bucket,
    merge_histograms,
    percentile,
    template_label,
    window_key,
)

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def _report(**fields: object) -> WindowReport:
    base: dict[str, object] = {
        "window_start": T0,
        "window_seconds": 60,
        "tenant": "acme",
        "template": "greet@1",
        "model": "m",
        "revision": 1,
    }
    return WindowReport.model_validate(base | fields)


def test_latency_buckets_and_percentiles() -> None:
    assert latency_bucket(0) == 0 and latency_bucket(1.0) == 0 and latency_bucket(1.05) == 1
    b100 = latency_bucket(100)
    assert LATENCY_BOUNDS_MS[b100] >= 100 > LATENCY_BOUNDS_MS[b100 - 1]
    assert LATENCY_BOUNDS_MS[b100] <= 110  # within 10%
    assert latency_bucket(10**9) == len(LATENCY_BOUNDS_MS) - 1  # the overflow bucket

    def bound(ms: float) -> float:
        return LATENCY_BOUNDS_MS[latency_bucket(ms)]

    histogram = {bound(10): 50, bound(100): 45, bound(1000): 5}
    assert percentile(histogram, 0.5) == bound(10)
    assert percentile(histogram, 0.95) == bound(100)
    assert percentile(histogram, 0.96) == bound(1000)
    assert percentile({}, 0.5) is None
    assert merge_histograms([{1.1: 2}, {1.1: 3, 4.0: 1}]) == {1.1: 5, 4.0: 1}
    # a histogram keyed by other bounds (older records) still merges meaningfully
    assert percentile(merge_histograms([{2.0: 1}, {1.5: 1, 3.0: 2}]), 0.5) == 2.0


def test_template_label_and_window_key() -> None:
    assert template_label(None, None) == "-"
    assert template_label("greet@production", 3) == "greet@3"
    assert template_label("greet@2", None) == "greet@2"
    # a '|' or quote in a tenant cannot make two windows share a key
    assert window_key(T0, "a|b", "c", "m") != window_key(T0, "a", "b|c", "m")
    assert orjson.loads(window_key(T0, 'x"', "-", "m")) == [int(T0.timestamp()), 'x"', "-", "m"]


def test_count_args_of_completions_and_failures() -> None:
    completion = Completion(
        job_id="j1",
        batch_id="b",
        tenant="acme",
        model="m",
        template="greet",
        template_version=2,
        text="hi",
        usage=Usage(prompt_tokens=7, completion_tokens=3, total_tokens=10),
        cost_usd=0.25,
        latency_ms=120,
        created_at=datetime(2026, 11, 21, 9, 0, 59, tzinfo=UTC),
    )
    found = _count_args(encode(completion), 60)
    assert found is not None
    batch, job, start, dims, tail = found
    assert (batch, job, start, dims) == ("b", "j1", T0, ("acme", "greet@2", "m", "-", "-"))
    assert tail == ["completion", 0, 7, 3, "0.25", latency_bucket(120)]
    routed = completion.model_copy(update={"group": "gpt", "deployment": "azure-eu"})
    assert _count_args(encode(routed), 60)[3][3:] == ("gpt", "azure-eu")  # type: ignore[index]
    cached = completion.model_copy(update={"cached": True})
    assert _count_args(encode(cached), 60) is not None
    assert _count_args(encode(cached), 60)[4][-1] == -1  # type: ignore[index]

    failure = Failure(job_id="j2", code=ErrorCode.INVALID_JSON, message="bad", failed_at=T0)
    found = _count_args(encode(failure), 60)
    assert (
        found is not None
        and found[3] == ("-", "-", "-", "-", "-")
        and found[4]
        == [
            "failure",
            "invalid_json",
        ]
    )
    downstream = failure.model_copy(update={"stage": Stage.MODERATION})
    assert _count_args(encode(downstream), 60) is None  # not a job's terminal record
    assert _count_args(b"{not json", 60) is None


def test_window_report_from_the_redis_hash() -> None:
    snapshot = {
        b"tenant": b"acme",
        b"template": b"greet@1",
        b"model": b"m",
        b"window_start": str(int(T0.timestamp())).encode(),
        b"window_seconds": b"60",
        b"revision": b"4",
        b"requests": b"4",
        b"completions": b"3",
        b"cache_hits": b"1",
        b"prompt_tokens": b"30",
        b"completion_tokens": b"12",
        b"cost_usd": b"0.5",
        b"failed:model_error": b"1",
        b"lat:20": b"2",
        b"lat:21": b"1",
    }
    report = window_report(snapshot)
    assert report.window_start == T0 and report.revision == 4
    assert report.failures == {"model_error": 1}
    assert report.latency_histogram == {LATENCY_BOUNDS_MS[20]: 2, LATENCY_BOUNDS_MS[21]: 1}
    assert report.latency_p50_ms == LATENCY_BOUNDS_MS[20]
    assert report.latency_p95_ms == LATENCY_BOUNDS_MS[21]
    assert decode(encode(report), WindowReport) == report  # float keys survive JSON


def test_group_and_render_in_all_formats() -> None:
    reports = [
        _report(requests=3, completions=2, failures={"model_error": 1}, cost_usd=0.5),
        _report(tenant="globex", requests=1, completions=1, latency_histogram={2.594: 1}),
        _report(window_start=T0.replace(minute=1), requests=2, completions=2, cache_hits=2),
    ]
    rows = group_reports(reports, ["tenant"])
    assert [(r.group["tenant"], r.requests, r.completions, r.failed) for r in rows] == [
        ("acme", 5, 4, 1),
        ("globex", 1, 1, 0),
    ]
    assert len(group_reports(reports, ["tenant"], per_window=True)) == 3

    table = render(rows, "table").splitlines()
    assert table[0].split()[:3] == ["TENANT", "REQUESTS", "COMPLETED"]
    assert table[-1].split()[:3] == ["TOTAL", "6", "5"]
    assert "model_error=1" in table[1]

    data = orjson.loads(render(rows, "json"))
    assert data[0]["failures"] == {"model_error": 1} and data[1]["latency_p50_ms"] is not None

    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert parsed[0]["tenant"] == "acme" and parsed[0]["failures"] == "model_error=1"
    assert render([], "csv").startswith("requests")


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_render_empty(fmt: str) -> None:
    assert render([], fmt) is not None
