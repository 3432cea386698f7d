"""Ordered commits for out-of-order work.

Jobs of one partition start in offset order but finish in any order. The offset that is
safe to commit is the lowest one whose job is not finished yet (or one past the last
finished one when nothing is in flight): committing further would lose the unfinished
job after a crash. Each partition's bookkeeping has an epoch, so that a job started
before a partition was revoked cannot mark an offset done in a later assignment.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)


@dataclass
class _Partition:
    epoch: int
    started: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    low_water: int | None = None  # next offset to commit; None until something finished


class OffsetTracker(Generic[P]):
    """Per-partition low-water marks of finished work."""

    def __init__(self) -> None:
        self._parts: dict[P, _Partition] = {}
        self._epochs = 0

    def assign(self, partition: P) -> None:
        """Begin tracking ``partition`` afresh (a new epoch)."""
        self._epochs += 1
        self._parts[partition] = _Partition(self._epochs)

    def forget(self, partition: P) -> None:
        self._parts.pop(partition, None)

    def epoch(self, partition: P) -> int | None:
        part = self._parts.get(partition)
        return part.epoch if part else None

    def started(self, partition: P, offset: int) -> int | None:
        """Record that work on ``offset`` began; returns the epoch to pass to :meth:`finished`.

        Returns ``None`` (start nothing) for an untracked partition or an offset that does
        not come after the last one started: offsets must start in order within an epoch.
        """
        part = self._parts.get(partition)
        if part is None:
            return None
        last = part.started[-1] if part.started else (part.low_water or 0) - 1
        if offset <= last:
            return None
        part.started.append(offset)
        return part.epoch

    def finished(self, partition: P, offset: int, epoch: int) -> None:
        """Record that the work on ``offset`` is terminal; stale epochs are ignored."""
        part = self._parts.get(partition)
        if part is None or part.epoch != epoch:
            return
        part.done.add(offset)
        while part.started and part.started[0] in part.done:
            first = part.started.popleft()
            part.done.discard(first)
            part.low_water = first + 1

    def committable(self, partition: P) -> int | None:
        """The offset to commit for ``partition`` (next to consume), or ``None``."""
        part = self._parts.get(partition)
        return part.low_water if part else None

    def in_flight(self, partition: P | None = None) -> int:
        if partition is not None:
            part = self._parts.get(partition)
            return len(part.started) if part else 0
        return sum(len(p.started) for p in self._parts.values())

    def partitions(self) -> list[P]:
        return list(self._parts)
