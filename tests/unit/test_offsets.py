"""Ordered commits for out-of-order work (OffsetTracker)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from processors.runtime.offsets import OffsetTracker
from processors.runtime.worker import _closed

pytestmark = pytest.mark.timeout(10)

TP = ("jobs", 0)
Partition = tuple[str, int]


@pytest.fixture
def tracker() -> OffsetTracker[Partition]:
    tracker: OffsetTracker[Partition] = OffsetTracker()
    tracker.assign(TP)
    return tracker


def _start(tracker: OffsetTracker[Partition], offsets: range | list[int]) -> int:
    epochs = {tracker.started(TP, o) for o in offsets}
    assert len(epochs) == 1
    (epoch,) = epochs
    assert epoch is not None
    return epoch


def test_nothing_committable_before_anything_finishes(tracker: OffsetTracker[Partition]) -> None:
    assert tracker.committable(TP) is None
    _start(tracker, range(5))
    assert tracker.committable(TP) is None
    assert tracker.in_flight(TP) == 5
    assert tracker.committable(("jobs", 9)) is None


def test_out_of_order_finishes_commit_only_a_contiguous_prefix(
    tracker: OffsetTracker[Partition],
) -> None:
    epoch = _start(tracker, range(10, 15))
    tracker.finished(TP, 12, epoch)
    tracker.finished(TP, 14, epoch)
    assert tracker.committable(TP) is None
    tracker.finished(TP, 10, epoch)
    assert tracker.committable(TP) == 11
    tracker.finished(TP, 11, epoch)
    assert tracker.committable(TP) == 13  # 12 was already done
    assert tracker.in_flight(TP) == 2
    tracker.finished(TP, 13, epoch)
    assert tracker.committable(TP) == 15
    assert tracker.in_flight(TP) == 0


def test_gaps_in_offsets_are_fine(tracker: OffsetTracker[Partition]) -> None:
    epoch = _start(tracker, [3, 7, 20])
    tracker.finished(TP, 20, epoch)
    tracker.finished(TP, 3, epoch)
    assert tracker.committable(TP) == 4
    tracker.finished(TP, 7, epoch)
    assert tracker.committable(TP) == 21


def test_stale_epoch_after_reassign_is_ignored(tracker: OffsetTracker[Partition]) -> None:
    old = _start(tracker, range(3))
    tracker.finished(TP, 0, old)
    assert tracker.committable(TP) == 1

    tracker.assign(TP)  # revoked and assigned again: a fresh epoch
    new = tracker.epoch(TP)
    assert new is not None and new != old
    assert tracker.committable(TP) is None
    assert tracker.started(TP, 1) == new
    tracker.finished(TP, 1, old)  # the job from the earlier assignment ends late
    assert tracker.committable(TP) is None
    assert tracker.in_flight(TP) == 1
    tracker.finished(TP, 1, new)
    assert tracker.committable(TP) == 2


def test_forgotten_partition_ignores_finishes(tracker: OffsetTracker[Partition]) -> None:
    epoch = _start(tracker, range(2))
    tracker.forget(TP)
    tracker.finished(TP, 0, epoch)
    assert tracker.committable(TP) is None
    assert tracker.epoch(TP) is None
    assert tracker.partitions() == []


def test_started_refuses_out_of_order_and_untracked(tracker: OffsetTracker[Partition]) -> None:
    assert tracker.started(("jobs", 1), 0) is None
    assert tracker.in_flight(("jobs", 1)) == 0
    epoch = _start(tracker, [5])
    assert tracker.started(TP, 5) is None
    assert tracker.started(TP, 4) is None
    assert tracker.started(TP, 6) == epoch
    tracker.finished(TP, 5, epoch)
    tracker.finished(TP, 6, epoch)
    assert tracker.committable(TP) == 7
    assert tracker.started(TP, 6) is None  # before the commit point, nothing in flight
    assert tracker.started(TP, 7) == epoch
    assert tracker.in_flight(TP) == 1


def test_partitions_are_independent() -> None:
    tracker: OffsetTracker[Partition] = OffsetTracker()
    a, b = ("jobs", 0), ("jobs", 1)
    tracker.assign(a)
    tracker.assign(b)
    ea, eb = tracker.started(a, 0), tracker.started(b, 100)
    assert ea is not None and eb is not None and ea != eb
    tracker.finished(b, 100, eb)
    tracker.finished(a, 0, eb)  # wrong partition's epoch: ignored
    assert (tracker.committable(a), tracker.committable(b)) == (None, 101)
    assert tracker.in_flight() == 1
    assert sorted(tracker.partitions()) == [a, b]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_finish_order_never_commits_past_unfinished_work(seed: int) -> None:
    rng = random.Random(seed)
    tracker: OffsetTracker[Partition] = OffsetTracker()
    tracker.assign(TP)
    offsets = sorted(rng.sample(range(10_000), 3000))
    epoch = _start(tracker, offsets)
    order = offsets[:]
    rng.shuffle(order)

    index = {offset: i for i, offset in enumerate(offsets)}
    done = [False] * len(offsets)
    low = 0  # index of the lowest unfinished offset
    for offset in order:
        tracker.finished(TP, offset, epoch)
        done[index[offset]] = True
        while low < len(offsets) and done[low]:
            low += 1
        committable = tracker.committable(TP)
        if low == 0:
            assert committable is None
            continue
        assert committable is not None
        if low < len(offsets):
            # never past the lowest unfinished offset ...
            assert committable <= offsets[low]
        # ... but as far as the finished prefix goes
        assert committable == offsets[low - 1] + 1
        assert tracker.in_flight(TP) == len(offsets) - low
    assert tracker.committable(TP) == offsets[-1] + 1
    assert tracker.in_flight(TP) == 0


def test_random_interleaving_of_starts_and_finishes() -> None:
    rng = random.Random(42)
    tracker: OffsetTracker[Partition] = OffsetTracker()
    tracker.assign(TP)
    total, next_offset = 4000, 0
    in_flight: dict[int, int] = {}
    while next_offset < total or in_flight:
        can_start = next_offset < total and len(in_flight) < 64
        if can_start and (not in_flight or rng.random() < 0.6):
            epoch = tracker.started(TP, next_offset)
            assert epoch is not None
            in_flight[next_offset] = epoch
            next_offset += 1
        else:
            offset = rng.choice(list(in_flight))
            tracker.finished(TP, offset, in_flight.pop(offset))
        committable = tracker.committable(TP)
        lowest = min(in_flight, default=next_offset)
        if lowest == 0:
            assert committable is None
        else:
            assert committable == lowest
        # started and not yet committable (finished ones above a gap still count)
        assert tracker.in_flight(TP) == next_offset - lowest
    assert tracker.committable(TP) == total


async def test_a_client_that_hangs_on_close_is_left_behind_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stopping worker bounds each close (the consumer leaving its group mid-rebalance
    once kept one past its grace period): the overrun or the error is logged, not raised."""
    hang = asyncio.Event()
    started = time.monotonic()
    await _closed("the consumer", hang.wait(), time.monotonic() + 0.2)
    assert 0.9 < time.monotonic() - started < 3  # at least a second each
    assert "closing the consumer did not finish in time" in caplog.text

    async def fails() -> None:
        raise RuntimeError("broker gone")

    await _closed("the producer", fails(), time.monotonic() + 5)
    assert "closing the producer failed: broker gone" in caplog.text
