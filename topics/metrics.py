"""Prometheus metrics: a small registry rendered in the text exposition format (0.0.4).

Counters, gauges and histograms with labels; enough for a worker's ``/metrics`` without a
client library. Label values are escaped; series appear once they have a value.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import TypeVar

LabelValues = tuple[str, ...]
Read = Callable[[], dict[LabelValues, float]]
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    pairs = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_: str, labels: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help_
        self.label_names = tuple(labels)

    def key(self, labels: dict[str, str]) -> LabelValues:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.label_names)

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class _Values(_Metric):
    """A value per label set: kept here, or (``read``) kept elsewhere and read at scrape."""

    def __init__(
        self, name: str, help_: str, labels: Iterable[str] = (), read: Read | None = None
    ) -> None:
        super().__init__(name, help_, labels)
        self._values: dict[LabelValues, float] = {}
        self._read = read

    def samples(self) -> list[str]:
        values = self._read() if self._read is not None else self._values
        return [
            f"{self.name}{_labels(self.label_names, k)} {_number(v)}"
            for k, v in sorted(values.items())
        ]


class Counter(_Values):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self.key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self.key(labels), 0.0)


class Gauge(_Values):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self._values[self.key(labels)] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_: str,
        labels: Iterable[str] = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, help_, labels)
        self.buckets = buckets
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self.key(labels)
        counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
        counts[bisect.bisect_left(self.buckets, value)] += 1
        self._sums[key] = self._sums.get(key, 0.0) + value

    def samples(self) -> list[str]:
        lines = []
        for key, counts in sorted(self._counts.items()):
            running = 0
            for bound, count in zip((*self.buckets, float("inf")), counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                bucket = _labels(self.label_names, key, 'le="' + le + '"')
                lines.append(f"{self.name}_bucket{bucket} {running}")
            lines.append(
                f"{self.name}_sum{_labels(self.label_names, key)} {_number(self._sums[key])}"
            )
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {running}")
        return lines


M = TypeVar("M", bound=_Metric)


class Registry:
    """The metrics of one process."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(
        self, name: str, help_: str, labels: Iterable[str] = (), read: Read | None = None
    ) -> Counter:
        """A counter (``read``: its values are kept elsewhere, read at scrape time)."""
        return self._add(Counter(name, help_, labels, read))

    def gauge(
        self, name: str, help_: str, labels: Iterable[str] = (), read: Read | None = None
    ) -> Gauge:
        """A gauge (``read``: computed at scrape time)."""
        return self._add(Gauge(name, help_, labels, read))

    def histogram(
        self,
        name: str,
        help_: str,
        labels: Iterable[str] = (),
        buckets: tuple[float, ...] = DEFAULT_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help_, labels, buckets)
        self._add(metric)
        return metric

    def render(self) -> str:
        return "".join(m.render() for m in self._metrics.values())
