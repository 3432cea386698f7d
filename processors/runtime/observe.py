"""What the worker runtime measures about itself, for ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable

from topics.metrics import LabelValues, Registry


class RuntimeMetrics:
    """Jobs by outcome, processing time, in-flight, commits and consumer lag."""

    def __init__(
        self,
        registry: Registry,
        processor: str,
        in_flight: Callable[[], int],
        lag: Callable[[], dict[tuple[str, int], int]],
    ) -> None:
        self.processor = processor
        self.jobs = registry.counter(
            "promptmill_jobs_total",
            "Records processed, by outcome and error code.",
            ("processor", "outcome", "code"),
        )
        self.duration = registry.histogram(
            "promptmill_job_duration_seconds",
            "From a record's start to its terminal record acknowledged by the broker.",
            ("processor",),
        )
        registry.gauge(
            "promptmill_jobs_in_flight",
            "Records being processed now.",
            ("processor",),
            read=lambda: {(processor,): float(in_flight())},
        )
        self.commits = registry.counter(
            "promptmill_commits_total", "Offset commits.", ("processor",)
        )

        def lag_values() -> dict[LabelValues, float]:
            return {(t, str(p)): float(v) for (t, p), v in lag().items()}

        registry.gauge(
            "promptmill_consumer_lag",
            "Records behind the log end, per partition.",
            ("topic", "partition"),
            read=lag_values,
        )

    def finished(self, seconds: float, codes: list[str | None]) -> None:
        self.duration.observe(seconds, processor=self.processor)
        for code in codes:
            outcome = "failure" if code else "completion"
            self.jobs.inc(processor=self.processor, outcome=outcome, code=code or "")
