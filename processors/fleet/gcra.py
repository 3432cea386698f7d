"""GCRA with variable costs and reservations: the rate-limit math, in Python.

The Redis Lua scripts in :mod:`processors.fleet.scripts` run exactly this math
atomically for the whole fleet; :class:`LocalBuckets` runs it in-process when Redis is
unavailable. Each bucket holds one number, its TAT (theoretical arrival time). A request
costing ``c`` units may be sent at ``s = max(now, TAT + c*interval - tolerance)`` (a
request larger than the burst waits for a full bucket instead) and moves TAT to
``max(TAT, s) + c*interval``. Several buckets reserve the same send time, the latest any
of them allows, so the send conforms to every bucket.

``factor`` (0 < factor <= 1) slows adaptive buckets after provider 429s: it drops on a
429 and climbs back linearly to 1 over ``recovery_ms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Charge:
    interval_ms: float
    tolerance_ms: float
    cost: float
    adaptive: bool


@dataclass
class Control:
    """Fleet-wide feedback from the provider for one model."""

    factor_at_penalty: float = 1.0
    penalty_ms: float = 0.0
    pause_until_ms: float = 0.0

    def factor(self, now_ms: float, recovery_ms: float) -> float:
        if self.factor_at_penalty >= 1.0:
            return 1.0
        climbed = (now_ms - self.penalty_ms) / recovery_ms if recovery_ms > 0 else 1.0
        return min(1.0, self.factor_at_penalty + (1 - self.factor_at_penalty) * max(0.0, climbed))

    def penalize(
        self,
        now_ms: float,
        retry_after_ms: float,
        recovery_ms: float,
        min_factor: float,
        debounce_ms: float,
    ) -> None:
        if now_ms - self.penalty_ms >= debounce_ms:
            self.factor_at_penalty = max(min_factor, self.factor(now_ms, recovery_ms) * 0.5)
            self.penalty_ms = now_ms
        self.pause_until_ms = max(self.pause_until_ms, now_ms + retry_after_ms)


def reserve(
    tats: Sequence[float | None],
    charges: Sequence[Charge],
    now_ms: float,
    control: Control,
    recovery_ms: float,
    horizon_ms: float = float("inf"),
) -> tuple[float, list[float] | None]:
    """(send time, new TATs) for one request across ``charges``.

    A send time further than ``horizon_ms`` ahead is not reserved (new TATs ``None``):
    the caller comes back at ``send - horizon``. Reservations far ahead would hold
    requests to a rate the provider may have long recovered from.
    """
    factor = control.factor(now_ms, recovery_ms)
    send = max(now_ms, control.pause_until_ms)
    intervals = [c.interval_ms / factor if c.adaptive else c.interval_ms for c in charges]
    for tat, charge, interval in zip(tats, charges, intervals, strict=True):
        current = now_ms if tat is None else tat
        amount = charge.cost * interval
        earliest = (
            current + amount - charge.tolerance_ms if amount <= charge.tolerance_ms else current
        )
        send = max(send, earliest)
    if send - now_ms > horizon_ms:
        return send, None
    new = [
        max(now_ms if tat is None else tat, send) + charge.cost * interval
        for tat, charge, interval in zip(tats, charges, intervals, strict=True)
    ]
    return send, new


class LocalBuckets:
    """The same buckets, held in this process only (the fallback when Redis is down)."""

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._last: dict[str, float] = {}  # latest send reserved per bucket
        self._controls: dict[str, Control] = {}

    def control(self, key: str) -> Control:
        return self._controls.setdefault(key, Control())

    def reserve(
        self,
        keys: Sequence[str],
        charges: Sequence[Charge],
        control_key: str,
        now_ms: float,
        recovery_ms: float,
        horizon_ms: float = float("inf"),
    ) -> tuple[float, bool]:
        """(send time in ms, whether it was reserved); see :func:`reserve`."""
        tats = [self._tats.get(k) for k in keys]
        control = self.control(control_key)
        send, new = reserve(tats, charges, now_ms, control, recovery_ms, horizon_ms)
        if new is None:
            return send, False
        self._tats.update(zip(keys, new, strict=True))
        self._last.update((key, send) for key in keys)
        return send, True

    def refund(self, key: str, units: float, interval_ms: float) -> None:
        """Give back (or, negative, charge) ``units``; never behind a send already reserved,
        so that sends stay in reservation order and windows keep within the limit."""
        if key in self._tats:
            self._tats[key] = max(self._last[key], self._tats[key] - units * interval_ms)
