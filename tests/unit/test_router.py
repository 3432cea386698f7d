"""The order in which a job tries its group's deployments."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from processors.model import ModelCallError, ModelClient
from processors.routing import Router, breaks, fails_over
from schemas import ErrorCode, Usage
from schemas.catalog import Catalog, Deployment, ModelGroup


def _deployment(name: str, **fields: object) -> Deployment:
    return Deployment.model_validate({"name": name, "base_url": f"http://{name}/v1"} | fields)


def _router(groups: dict[str, ModelGroup], seed: int = 7) -> Router:
    catalog = Catalog(groups=groups)
    return Router(catalog, lambda d: ModelClient(d.base_url, "-"), random.Random(seed))


def test_first_choices_follow_the_weights() -> None:
    group = ModelGroup(
        deployments=[_deployment("a", weight=1), _deployment("b", weight=3), _deployment("c")]
    )
    router = _router({"m": group})
    firsts = Counter(router.order("m")[0].name for _ in range(10_000))
    assert abs(firsts["a"] / 10_000 - 0.2) < 0.02
    assert abs(firsts["b"] / 10_000 - 0.6) < 0.02
    assert all(len({r.name for r in router.order("m")}) == 3 for _ in range(100))


def test_cost_routing_tries_the_cheapest_first_then_the_fallback_groups() -> None:
    groups = {
        "m": ModelGroup(
            routing="cost",
            fallbacks=["small"],
            deployments=[
                _deployment("dear", price_input_per_1m=5, price_output_per_1m=15),
                _deployment("cheap", price_input_per_1m=0.1, price_output_per_1m=0.4),
            ],
        ),
        "small": ModelGroup(deployments=[_deployment("local")]),
    }
    router = _router(groups)
    order = router.order("m")
    assert [r.label("m") for r in order] == ["cheap", "dear", "small/local"]
    assert [r.limit_key for r in order] == ["m@cheap", "m@dear", "small@local"]
    assert order[2].provider_model == "small"  # the fallback group's own model name
    assert order[0].cost_usd(Usage(prompt_tokens=1_000_000, completion_tokens=0)) == 0.1
    assert order[2].cost_usd(Usage(prompt_tokens=10)) is None  # no prices: the settings'
    assert router.order("unknown") == []


def test_each_deployments_limits_are_its_own() -> None:
    group = ModelGroup(deployments=[_deployment("a", rpm=600), _deployment("b", tpm=90_000)])
    limits = _router({"m": group}).limits()
    assert (limits["m@a"].rpm, limits["m@a"].tpm) == (600, None)
    assert (limits["m@b"].rpm, limits["m@b"].tpm) == (None, 90_000)


def test_a_deployment_whose_breaker_is_open_goes_last() -> None:
    group = ModelGroup(deployments=[_deployment("a", weight=100), _deployment("b")])
    router = _router({"m": group})
    for _ in range(50):
        assert [r.name for r in router.order("m", lambda name: name == "m@a")] == ["b", "a"]
    assert router.names() == ["m@a", "m@b"]


@pytest.mark.parametrize(
    ("code", "moves", "counts"),
    [
        (ErrorCode.MODEL_ERROR, True, True),
        (ErrorCode.MODEL_TIMEOUT, True, True),
        (ErrorCode.RATE_LIMIT_EXHAUSTED, True, False),  # busy, not broken
        (ErrorCode.PROMPT_TOO_LONG, False, False),
        (ErrorCode.CONTENT_FILTER, False, False),  # moves only where a group opts in
    ],
)
def test_which_failures_move_a_call_and_count_against_a_breaker(
    code: ErrorCode, moves: bool, counts: bool
) -> None:
    exc = ModelCallError("x", code=code, retriable=True, attempts=1)
    assert (fails_over(exc), breaks(exc)) == (moves, counts)
