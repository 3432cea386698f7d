"""The rate-limit math (GCRA with variable costs and reservations) and its local fallback."""

from __future__ import annotations

import random

import pytest

from processors.fleet import FleetState, Limit, LimitTable
from processors.fleet.gcra import Charge, Control, LocalBuckets, reserve
from processors.fleet.limits import WINDOW_SECONDS, BucketSpec
from processors.fleet.state import FleetConfig, ProviderFeedback
from processors.model import feedback_from
from processors.retry import parse_duration

WINDOW_MS = WINDOW_SECONDS * 1000


def _charge(spec: BucketSpec, cost: float) -> Charge:
    return Charge(spec.interval_ms, spec.tolerance_ms, cost, spec.adaptive)


def _max_in_window(sends: list[tuple[float, float]]) -> float:
    """Largest sum of costs sent in any half-open window of WINDOW_MS."""
    sends = sorted(sends)
    best, total, start = 0.0, 0.0, 0
    for end, (t, cost) in enumerate(sends):
        total += cost
        while sends[start][0] <= t - WINDOW_MS:
            total -= sends[start][1]
            start += 1
        best = max(best, total)
        _ = end
    return best


@pytest.mark.parametrize("limit", [10, 600, 10_000])
def test_saturating_requests_never_exceed_the_limit_in_any_window(limit: int) -> None:
    spec = BucketSpec.for_limit("k", limit, 1.0, adaptive=True)
    tat: float | None = None
    sends: list[tuple[float, float]] = []
    now = 0.0
    for _ in range(limit * 3):  # far more demand than the limit allows, all asking at once
        send, new = reserve([tat], [_charge(spec, 1)], now, Control(), 5000)
        assert new is not None
        tat = new[0]
        sends.append((send, 1))
        now += 0.01
    assert _max_in_window(sends) <= limit
    # and it is not wasteful: it paces at limit - burst a window (the burst is the price of
    # never exceeding the limit in any window: 1 of 10, 10 of 600, 166 of 10,000)
    burst = spec.tolerance_ms / spec.interval_ms
    last = max(t for t, _ in sends)
    assert len(sends) / (last / WINDOW_MS) >= 0.99 * (limit - burst)


def test_variable_token_costs_stay_within_the_limit() -> None:
    rng = random.Random(7)
    spec = BucketSpec.for_limit("k", 100_000, 1.0, adaptive=True)
    tat: float | None = None
    sends = []
    now = 0.0
    for _ in range(2000):
        cost = rng.randint(50, 1500)  # below the burst of ~1,667 tokens
        send, new = reserve([tat], [_charge(spec, cost)], now, Control(), 5000)
        assert new is not None
        tat = new[0]
        sends.append((send, float(cost)))
        now += rng.uniform(0, 5)
    assert _max_in_window(sends) <= 100_000


def test_several_buckets_reserve_one_send_time_that_fits_all() -> None:
    requests = BucketSpec.for_limit("r", 60, 1.0, adaptive=True)  # about 1 a second
    tokens = BucketSpec.for_limit("t", 6000, 1.0, adaptive=True)
    tats: list[float | None] = [None, None]
    sends = []
    for _ in range(200):
        send, new = reserve(tats, [_charge(requests, 1), _charge(tokens, 90)], 0.0, Control(), 5000)
        assert new is not None
        tats = list(new)
        sends.append(send)
    # 90 tokens a request at 6,000 tokens/min is the tighter limit: <= 66 a minute
    assert sum(1 for s in sends if s < WINDOW_MS) <= 6000 // 90
    assert sends == sorted(sends)


def test_a_429_halves_the_rate_pauses_and_recovers_linearly() -> None:
    control = Control()
    control.penalize(
        1000.0, retry_after_ms=2000, recovery_ms=5000, min_factor=0.05, debounce_ms=1000
    )
    assert control.factor(1000.0, 5000) == 0.5
    assert control.pause_until_ms == 3000.0
    control.penalize(1500.0, 500, 5000, 0.05, 1000)  # debounced: no second halving
    assert control.factor(1500.0, 5000) == pytest.approx(0.55)
    assert control.factor(6000.0, 5000) == 1.0
    spec = BucketSpec.for_limit("k", 600, 1.0, adaptive=True)
    send, _ = reserve([None], [_charge(spec, 1)], 1000.0, control, 5000)
    assert send == 3000.0  # nobody sends before Retry-After has passed


def test_tenant_quotas_are_not_slowed_by_provider_429s() -> None:
    control = Control(factor_at_penalty=0.1, penalty_ms=0.0)
    spec = BucketSpec.for_limit("tenant", 600, 1.0, adaptive=False)
    _, new = reserve([0.0], [_charge(spec, 1)], 0.0, control, 5000)
    assert new is not None and new[0] == pytest.approx(spec.interval_ms)


def test_refund_gives_back_overestimated_tokens() -> None:
    spec = BucketSpec.for_limit("k", 6000, 1.0, adaptive=False)
    small, large = _charge(spec, 100), _charge(spec, 3000)
    trued_up, baseline = LocalBuckets(), LocalBuckets()
    assert trued_up.reserve(["k"], [small], "ctl", 0.0, 5000) == (0.0, True)
    assert trued_up.reserve(["k"], [large], "ctl", 0.0, 5000)[0] > 0
    trued_up.refund("k", 3000, spec.interval_ms)  # the large request used nothing after all
    baseline.reserve(["k"], [small], "ctl", 0.0, 5000)
    expected, _ = baseline.reserve(["k"], [small], "ctl", 0.0, 5000)
    assert trued_up.reserve(["k"], [small], "ctl", 0.0, 5000)[0] == pytest.approx(expected)


async def test_fleet_state_without_redis_paces_locally_at_its_share() -> None:
    limits = LimitTable({"m": Limit(rpm=600)})
    fleet = FleetState(None, "pm", limits, FleetConfig(local_share=0.5, horizon_seconds=60))
    waits = [(await fleet.lookup("cache-key", "m", "t", 10)).wait for _ in range(40)]
    assert all(w >= 0 for w in waits) and waits == sorted(waits)
    # 600/min at a 50% share is ~5 a second: 40 requests take ~8 seconds of reservations
    assert 6.0 < waits[-1] < 9.0
    assert fleet.round_trips == 0
    unlimited = await fleet.lookup(None, "other-model", "t", 10)
    assert unlimited.cached is None and unlimited.wait == 0.0


def test_no_reservation_beyond_the_horizon() -> None:
    spec = BucketSpec.for_limit("k", 60, 1.0, adaptive=True)  # ~1 a second
    buckets = LocalBuckets()
    answers = [buckets.reserve(["k"], [_charge(spec, 1)], "c", 0.0, 5000, 2000) for _ in range(5)]
    reserved = [send for send, ok in answers if ok]
    assert reserved == [0.0, pytest.approx(60_000 / 59)]  # the next slot, 2.03 s, is too far
    later = [send for send, ok in answers if not ok]
    assert later and all(send > 2000 for send in later)


def test_limit_table_picks_model_default_and_tenant_buckets() -> None:
    table = LimitTable(
        {"*": Limit(rpm=100), "big": Limit(rpm=1000, tpm=10**6)}, {"acme": Limit(tpm=5000)}
    )
    keys = [(s.key, kind, s.adaptive) for s, kind in table.buckets("pm", "big", "acme")]
    assert keys == [
        ("pm:{rl}:model:big:req", "requests", True),
        ("pm:{rl}:model:big:tok", "tokens", True),
        ("pm:{rl}:tenant:acme:tok", "tokens", False),
    ]
    assert [s.key for s, _ in table.buckets("pm", "small", "nobody")] == ["pm:{rl}:model:small:req"]


def test_provider_feedback_from_headers() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "120ms",
    }
    feedback = feedback_from(headers)
    assert feedback == ProviderFeedback(0, 1.5, 900, 0.12)
    assert feedback.pause_seconds() == 1.5
    assert feedback_from({}) is None
    assert parse_duration("6m0s") == 360.0 and parse_duration("soon") is None
    limits = feedback_from(headers | {"x-ratelimit-limit-requests": "1200"})
    assert limits is not None and (limits.limit_requests, limits.limit_tokens) == (1200, None)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("20ms", 0.02),
        ("6m0s", 360.0),
        ("1m7.2s", 67.2),
        ("2h", 7200.0),
        ("1h2m3.5s", 3723.5),
        ("500us", 0.0005),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        ("1s20ms", 1.02),
    ],
)
def test_every_duration_form_openai_sends(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "1x", "ms", "-1s", "1.s", "1s garbage", None])
def test_a_duration_that_is_not_one_is_none(text: str | None) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("remaining", "reset", "stepped", "pause"),
    [
        # OpenAI's bucket, refilled continuously at 1,200 a minute: empty means a minute to
        # full, but one request is back in 50 ms
        (0, 60.0, False, 0.05),
        (600, 30.0, False, 0.0),
        (1200, 0.0, False, 0.0),
        # 1,200 a minute enforced as 20 a second: full again at the next second, whatever is left
        (0, 0.4, True, 0.4),
        (15, 0.9, True, 0.0),
    ],
)
def test_a_bucket_refilled_in_steps_is_told_from_one_refilled_continuously(
    remaining: int, reset: float, stepped: bool, pause: float
) -> None:
    feedback = ProviderFeedback(remaining, reset, limit_requests=1200)
    assert feedback.stepped("requests") is stepped
    assert feedback.pause_seconds() == pytest.approx(pause)
    assert (feedback.stepped_reset_ms("requests") >= 0) is stepped
