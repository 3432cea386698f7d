"""Hostile templates: rendering is bounded in time, memory and output, off the event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from processors.templates.pool import COOLDOWN_SECONDS, STRIKES, PoolConfig, RenderPool
from processors.templates.render import Renderer, RenderError
from schemas import ChatMessage, Template
from schemas.templates import TemplateBody

pytestmark = pytest.mark.timeout(60)

ISSUE_BOMB = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
LOOP_BOMB = (  # every range within the cap: only the deadline stops it
    "{% for i in range(9999) %}{% for j in range(9999) %}{% for k in range(9999) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)
SMALL_LOOPS = "{% for i in range(9000) %}{% for j in range(9000) %}{% endfor %}{% endfor %}done"


def _template(source: str, name: str = "t") -> Template:
    body = TemplateBody(name=name, messages=[ChatMessage(role="user", content=source)])
    return Template(**body.model_dump(), version=1, content_hash=body.compute_hash())


@pytest.fixture
async def renderer() -> AsyncIterator[Renderer]:
    async with Renderer(RenderPool(PoolConfig(processes=2, timeout=1.0))) as renderer:
        yield renderer


async def _render(renderer: Renderer, source: str, **variables: Any) -> str:
    (message,) = await renderer.render(_template(source), variables, 1000)
    return message.content


class LoopWatch:
    """The longest the event loop went without running this ticker."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopWatch:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _tick(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.worst = max(self.worst, now - last)
            last = now


async def test_nested_loops_fail_at_the_deadline_while_the_loop_keeps_running(
    renderer: Renderer,
) -> None:
    started = time.monotonic()
    async with LoopWatch() as watch:
        with pytest.raises(RenderError) as failed:
            await _render(renderer, LOOP_BOMB)
        # meanwhile the other child keeps serving ordinary renders
        ordinary = await asyncio.gather(*(_render(renderer, "{{ 2 * n }}", n=i) for i in range(20)))
    assert time.monotonic() - started < 3.0
    assert failed.value.code.value == "render_error"
    assert "rendering took longer than 1 s" in failed.value.message
    assert ordinary == [str(2 * i) for i in range(20)]
    assert watch.worst < 0.25  # the event loop was never held


@pytest.mark.parametrize(
    "source",
    [
        ISSUE_BOMB,
        "{{ 'a' * 10**9 }}",
        "{{ [1] * 10**9 }}",
        "{{ 10 ** (10 ** 8) }}",
        "{{ range(10**9)|list }}",
    ],
)
async def test_arithmetic_bombs_fail_fast_without_allocating(
    renderer: Renderer, source: str
) -> None:
    started = time.monotonic()
    with pytest.raises(RenderError):
        await _render(renderer, source)
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ ''|attr('__class__')|attr('__mro__') }}",
        "{{ ('{0.__class__.__mro__}'|attr('format'))(1) }}",
        "{{ '{0.__class__.__mro__}'.format(1) }}",
        "{{ '{x.__class__}'.format_map({'x': 1}) }}",
        "{{ '%s'|format(''.__class__) }}",
        "{{ lipsum.__globals__['os'] }}",
        "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}",
    ],
)
async def test_sandbox_escapes_are_render_errors(renderer: Renderer, source: str) -> None:
    with pytest.raises(RenderError) as failed:
        await _render(renderer, source)
    assert "uid=" not in failed.value.message and "<class" not in failed.value.message


async def test_memory_limit_setting() -> None:
    hog = (
        "{% set held = [] %}{% for i in range(120) %}"
        "{% set _ = held.append('x' * 900000 ~ i) %}{% endfor %}{{ held|length }}"
    )
    async with Renderer(RenderPool(PoolConfig(processes=1, memory_mb=64, timeout=10))) as small:
        with pytest.raises(RenderError, match=r"out of memory|died"):
            await _render(small, hog)
        assert await _render(small, "{{ 1 + 1 }}") == "2"  # a fresh child took over
    async with Renderer(RenderPool(PoolConfig(processes=1, memory_mb=1024, timeout=10))) as big:
        assert await _render(big, hog) == "120"


async def test_output_cap_setting() -> None:
    source = "{% for i in range(500) %}0123456789{% endfor %}"
    async with Renderer(RenderPool(PoolConfig(processes=1, max_output=4000))) as capped:
        with pytest.raises(RenderError, match="exceeds 4,000 characters"):
            await _render(capped, source)
        with pytest.raises(RenderError, match="would build"):
            await _render(capped, "{{ 'ab' * 2001 }}")
    async with Renderer(RenderPool(PoolConfig(processes=1, max_output=6000))) as roomy:
        assert len(await _render(roomy, source)) == 5000


async def test_timeout_setting() -> None:
    async with Renderer(RenderPool(PoolConfig(processes=1, timeout=0.3))) as short:
        with pytest.raises(RenderError, match=r"longer than 0\.3 s"):
            await _render(short, SMALL_LOOPS)
    async with Renderer(RenderPool(PoolConfig(processes=1, timeout=30))) as long:
        assert await _render(long, SMALL_LOOPS) == "done"


async def test_processes_setting() -> None:
    pool = RenderPool(PoolConfig(processes=3))
    async with pool:
        pids = pool.pids()
        assert len(pids) == 3 and all(pid != os.getpid() for pid in pids)
    assert pool.pids() == []


async def test_a_template_that_keeps_timing_out_fails_fast(renderer: Renderer) -> None:
    for _ in range(STRIKES):
        with pytest.raises(RenderError, match="longer than"):
            await _render(renderer, LOOP_BOMB)
    started = time.monotonic()
    with pytest.raises(RenderError, match=f"timed out in its last {STRIKES} renders"):
        await _render(renderer, LOOP_BOMB)
    assert time.monotonic() - started < 0.1
    assert COOLDOWN_SECONDS >= 10


async def test_a_child_that_dies_is_replaced() -> None:
    pool = RenderPool(PoolConfig(processes=1, timeout=5))
    async with Renderer(pool) as renderer:
        (pid,) = pool.pids()
        slow = asyncio.create_task(_render(renderer, SMALL_LOOPS))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(RenderError, match="died"):
            await slow
        assert await _render(renderer, "{{ 'still' }} {{ x }}", x="here") == "still here"
        assert pool.pids() != [pid] and pool.replaced == 1


async def test_linear_templates_render_inline_unless_the_input_is_large(
    renderer: Renderer,
) -> None:
    before = (renderer.inline, renderer.pooled)
    template = _template("Summarize {{ text|trim }} in {{ lang|default('en') }}.")
    await renderer.render(template, {"text": "x"}, 1000)
    assert (renderer.inline, renderer.pooled) == (before[0] + 1, before[1])
    await renderer.render(template, {"text": "x"}, 900_000)  # its bound passes the cap
    assert (renderer.inline, renderer.pooled) == (before[0] + 1, before[1] + 1)
    await renderer.render(_template("{% for w in words %}{{ w }}{% endfor %}"), {"words": []}, 10)
    assert renderer.pooled == before[1] + 2  # loops always go to the pool
