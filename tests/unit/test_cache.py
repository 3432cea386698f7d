"""The response cache key, single-flight coalescing, and the cache without Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from processors.cache import Coalescer, request_key
from schemas import ChatMessage

pytestmark = pytest.mark.timeout(10)

MESSAGES = [
    ChatMessage(role="system", content="Be brief."),
    ChatMessage(role="user", content="Summarize: hello"),
]


def test_request_key_is_stable_under_dict_order() -> None:
    one = request_key("m", MESSAGES, {"temperature": 0, "max_tokens": 5, "stop": ["a", "b"]}, "t")
    two = request_key(
        "m", list(MESSAGES), {"stop": ["a", "b"], "max_tokens": 5, "temperature": 0}, "t"
    )
    assert one == two
    assert len(one) == 64 and int(one, 16) >= 0
    nested_a = request_key("m", MESSAGES, {"response_format": {"type": "json", "a": 1}}, "t")
    nested_b = request_key("m", MESSAGES, {"response_format": {"a": 1, "type": "json"}}, "t")
    assert nested_a == nested_b


def test_request_key_differs_by_model_params_and_messages() -> None:
    base = request_key("m", MESSAGES, {"temperature": 0}, "t")
    others = {
        request_key("m2", MESSAGES, {"temperature": 0}, "t"),
        request_key("m", MESSAGES, {"temperature": 0.1}, "t"),
        request_key("m", MESSAGES, {"temperature": 0, "seed": 1}, "t"),
        request_key("m", MESSAGES, {}, "t"),
        request_key("m", MESSAGES[1:], {"temperature": 0}, "t"),
        request_key("m", MESSAGES[::-1], {"temperature": 0}, "t"),
        request_key(
            "m",
            [MESSAGES[0], ChatMessage(role="user", content="Summarize: hello!")],
            {"temperature": 0},
            "t",
        ),
        request_key(
            "m",
            [MESSAGES[0], ChatMessage(role="assistant", content="Summarize: hello")],
            {"temperature": 0},
            "t",
        ),
        request_key(
            "m",
            [MESSAGES[0], ChatMessage(role="user", content="Summarize: hello", name="x")],
            {"temperature": 0},
            "t",
        ),
    }
    assert base not in others
    assert len(others) == 9


def test_request_key_is_scoped_to_the_tenant_unless_shared() -> None:
    acme = request_key("m", MESSAGES, {"temperature": 0}, "acme")
    globex = request_key("m", MESSAGES, {"temperature": 0}, "globex")
    shared = request_key("m", MESSAGES, {"temperature": 0}, None)
    assert len({acme, globex, shared}) == 3
    assert acme == request_key("m", MESSAGES, {"temperature": 0}, "acme")


async def test_coalescer_runs_the_factory_once_for_concurrent_callers() -> None:
    coalescer: Coalescer[str] = Coalescer(linger=0.05)
    calls = 0
    release = asyncio.Event()

    async def factory() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return f"answer {calls}"

    tasks = [asyncio.create_task(coalescer.run("k", factory)) for _ in range(50)]
    await asyncio.sleep(0.01)
    assert calls == 1
    release.set()
    results = await asyncio.gather(*tasks)
    assert calls == 1
    assert results[0] == ("answer 1", False)  # the first caller ran it ...
    assert results[1:] == [("answer 1", True)] * 49  # ... and everyone else shared it

    # a success lingers a moment, then the same key runs again
    assert await coalescer.run("k", factory) == ("answer 1", True)
    await asyncio.sleep(0.1)
    assert await coalescer.run("k", factory) == ("answer 2", False)
    assert calls == 2


async def test_coalescer_linger_zero_runs_again_at_once() -> None:
    coalescer: Coalescer[int] = Coalescer(linger=0)
    calls = 0

    async def factory() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await coalescer.run("k", factory) == (1, False)
    await asyncio.sleep(0.01)
    assert await coalescer.run("k", factory) == (2, False)


async def test_coalescer_keys_are_independent() -> None:
    coalescer: Coalescer[str] = Coalescer(linger=0.01)
    started: list[str] = []

    def make(key: str) -> Callable[[], Awaitable[str]]:
        async def factory() -> str:
            started.append(key)
            await asyncio.sleep(0.01)
            return key.upper()

        return factory

    results = await asyncio.gather(*(coalescer.run(k, make(k)) for k in ("a", "b", "a", "c")))
    assert sorted(started) == ["a", "b", "c"]
    assert results == [("A", False), ("B", False), ("A", True), ("C", False)]


async def test_coalescer_exception_reaches_every_caller_and_is_not_kept() -> None:
    coalescer: Coalescer[int] = Coalescer(linger=0)
    calls = 0

    async def failing() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        raise ValueError(f"boom {calls}")

    results = await asyncio.gather(
        *(coalescer.run("k", failing) for _ in range(20)), return_exceptions=True
    )
    assert calls == 1
    assert all(isinstance(r, ValueError) and str(r) == "boom 1" for r in results)

    async def working() -> int:
        nonlocal calls
        calls += 1
        return 42

    assert await coalescer.run("k", working) == (42, False)  # the failure was not kept
    await asyncio.sleep(0.01)  # let the success stop lingering
    with pytest.raises(ValueError, match="boom 3"):
        await coalescer.run("k", failing)
    assert calls == 3


async def test_coalescer_follower_cancellation_does_not_cancel_the_call() -> None:
    coalescer: Coalescer[str] = Coalescer(linger=0.01)
    release = asyncio.Event()

    async def factory() -> str:
        await release.wait()
        return "done"

    leader = asyncio.create_task(coalescer.run("k", factory))
    await asyncio.sleep(0)
    follower = asyncio.create_task(coalescer.run("k", factory))
    await asyncio.sleep(0)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower
    release.set()
    assert await leader == ("done", False)


async def test_coalescer_followers_survive_a_cancelled_leader() -> None:
    """The caller running the shared call is cancelled (its partition was revoked): the
    followers are not cancelled with it; one of them runs the call again."""
    coalescer: Coalescer[str] = Coalescer()
    calls = 0
    release = asyncio.Event()

    async def factory() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return f"answer {calls}"

    leader = asyncio.create_task(coalescer.run("k", factory))
    await asyncio.sleep(0)
    followers = [asyncio.create_task(coalescer.run("k", factory)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*followers)
    assert leader.cancelled()
    assert calls == 2
    assert sorted(shared for _, shared in results) == [False, True, True]
    assert {value for value, _ in results} == {"answer 2"}
