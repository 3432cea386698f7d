"""Usage reports: one record per time window and (tenant, template@version, model).

The reporting processor counts every job once, in the window of its terminal record's
time, and publishes the window's running totals to the reports topic, keyed by
:meth:`WindowReport.key`. A window is republished whenever a late record changes it;
``revision`` grows with every change, so a reader keeps the highest revision per key.

Latency is carried as a histogram keyed by each bucket's upper bound in milliseconds
(:data:`LATENCY_BOUNDS_MS`), so windows and groups merge exactly, percentiles are read off
the merged counts, and a record stays meaningful even if the bounds change one day.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.results import utcnow

# Upper bounds (ms) of the latency buckets: 1 ms growing by 10% to ~13 min, so a percentile
# is exact to within 10%; a last bucket (1e12 ms) holds everything slower.
LATENCY_BOUNDS_MS: tuple[float, ...] = (*(round(1.1**i, 3) for i in range(143)), 1e12)
NONE = "-"  # the dimension value of a record that has none (no template, unknown model)


def template_label(ref: str | None, version: int | None) -> str:
    """The template dimension of a record: ``name@version``, the reference as the job gave
    it when no version was resolved, or ``-`` for a job without a template."""
    if not ref:
        return NONE
    name = ref.split("@", 1)[0]
    return f"{name}@{version}" if version is not None else ref


def latency_bucket(ms: float) -> int:
    """The index of the bucket that counts a latency of ``ms``."""
    return min(bisect.bisect_left(LATENCY_BOUNDS_MS, ms), len(LATENCY_BOUNDS_MS) - 1)


def percentile(histogram: Mapping[float, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram (upper bound ms -> count): the
    upper bound of the bucket it falls in."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank, seen = q * total, 0
    bounds = sorted(histogram)
    for bound in bounds:
        seen += histogram[bound]
        if seen >= rank:
            return bound
    return bounds[-1]


def merge_histograms(histograms: Iterable[Mapping[float, int]]) -> dict[float, int]:
    merged: dict[float, int] = {}
    for histogram in histograms:
        for bound, count in histogram.items():
            merged[bound] = merged.get(bound, 0) + count
    return merged


class WindowReport(BaseModel):
    """The totals of one window for one (tenant, template@version, model)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["report"] = "report"
    schema_version: Literal[1] = 1
    window_start: datetime
    window_seconds: int = Field(gt=0)
    tenant: str
    template: str  # "name@version", or "-" for raw-message jobs
    model: str  # "-" when a failure happened before a model was known
    group: str = "-"  # the model catalog group of routed completions ("-": not routed)
    deployment: str = "-"  # the catalog deployment that answered ("-": not routed)
    revision: int = Field(ge=0)
    requests: int = 0  # distinct jobs that ended in this window: completions + failures
    completions: int = 0
    failures: dict[str, int] = Field(default_factory=dict)  # by error code
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_histogram: dict[float, int] = Field(default_factory=dict)  # upper bound ms -> count
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    # the online evals of this window's completions (promptmill worker --processor evals)
    evaluated: int = 0
    eval_passed: int = 0
    eval_score_sum: float = 0.0
    assertion_counts: dict[str, int] = Field(default_factory=dict)  # by assertion type
    assertion_passes: dict[str, int] = Field(default_factory=dict)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def key(self) -> str:
        return window_key(
            self.window_start, self.tenant, self.template, self.model, self.group, self.deployment
        )


def window_key(
    start: datetime,
    tenant: str,
    template: str,
    model: str,
    group: str = NONE,
    deployment: str = NONE,
) -> str:
    """The record key of a window: a JSON array of its start (epoch s) and dimensions (the
    catalog's group and deployment only for routed completions: other keys as they were)."""
    dims: list[Any] = [int(start.timestamp()), tenant, template, model]
    if (group, deployment) != (NONE, NONE):
        dims += [group, deployment]
    return orjson.dumps(dims).decode()
