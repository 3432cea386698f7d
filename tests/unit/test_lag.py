"""KEDA's lag arithmetic and the ``lag`` command's arguments."""

from __future__ import annotations

import pytest

from promptmill.cli import build_parser
from topics.lag import GroupLag, PartitionLag

pytestmark = pytest.mark.timeout(10)


def _lag(*lags: int) -> GroupLag:
    rows = [PartitionLag("t", p, 0, lag, lag) for p, lag in enumerate(lags)]
    return GroupLag("g", rows)


def test_metric_is_capped_at_partitions_times_threshold() -> None:
    lag = _lag(1000, 0, 0)
    assert lag.keda_metric(100) == 300
    assert lag.keda_metric(100, allow_idle_consumers=True) == 1000
    assert lag.replicas(100) == 3


def test_threshold_zero_is_refused_not_a_division_by_zero() -> None:
    with pytest.raises(ValueError, match="lagThreshold must be at least 1"):
        _lag(5).keda_metric(0)


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_lag_command_refuses_a_threshold_below_one(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["lag", "--threshold", value])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("promptmill lag: error: argument --threshold:")
