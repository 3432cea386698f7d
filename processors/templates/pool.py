"""Bounded rendering: child processes with a deadline and a memory limit.

A template is code, and ``{% for i in range(10**5) %}{% for j in range(10**5) %}...`` runs
for hours while holding the CPU; Python cannot interrupt a thread, and a render on the
event loop would stop the worker's heartbeats, commits and ``/healthz``. So renders that
are not provably cheap (:mod:`processors.templates.linear`) go to a small pool of child
processes (:mod:`processors.templates.child`), one render at a time each:

- a render that passes ``timeout`` seconds gets its child killed (``SIGKILL``) and
  replaced, and fails with kind ``timeout``; a child that dies (its memory limit, say)
  is replaced too;
- a template that timed out :data:`STRIKES` times in a row fails at once for
  :data:`COOLDOWN_SECONDS` instead of occupying a child again -- other jobs keep their
  share of the pool while a hostile template is being fed to the fleet;
- the event loop only writes and reads pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from processors.templates.child import COMPILED_CACHE, HEADER

log = logging.getLogger(__name__)
STRIKES = 3
COOLDOWN_SECONDS = 60.0


class RenderFailed(Exception):
    """A render that did not produce output; ``kind`` says why (see the child's kinds, plus
    ``timeout`` and ``crashed``)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class PoolConfig:
    processes: int = 2
    timeout: float = 2.0  # seconds one render may take
    memory_mb: int = 256  # address-space limit of each child
    max_output: int = 1_000_000  # characters of output of one render


@dataclass(eq=False)
class _Child:
    process: asyncio.subprocess.Process
    known: OrderedDict[str, None] = field(default_factory=OrderedDict)  # keys it compiled

    async def ask(self, key: str, sources: list[str], variables: dict[str, Any]) -> Any:
        reply = await self._round_trip(key, None if key in self.known else sources, variables)
        if reply.get("need"):
            reply = await self._round_trip(key, sources, variables)
        self.known[key] = None
        self.known.move_to_end(key)
        if len(self.known) > COMPILED_CACHE:
            self.known.popitem(last=False)
        return reply

    async def _round_trip(
        self, key: str, sources: list[str] | None, variables: dict[str, Any]
    ) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:
            raise ConnectionError("render child has no pipes")
        payload = pickle.dumps((key, sources, variables), protocol=pickle.HIGHEST_PROTOCOL)
        stdin.write(HEADER.pack(len(payload)) + payload)
        await stdin.drain()
        (size,) = HEADER.unpack(await stdout.readexactly(HEADER.size))
        reply = orjson.loads(await stdout.readexactly(size))
        if not isinstance(reply, dict):
            raise ConnectionError("render child sent a malformed reply")
        return reply

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class RenderPool:
    """``processes`` render children; :meth:`render` runs one render in a free one."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self._idle: asyncio.Queue[_Child] = asyncio.Queue()
        self._children: set[_Child] = set()
        self._strikes: dict[str, tuple[int, float]] = {}  # key -> (timeouts in a row, until)
        self._reaping: set[asyncio.Task[None]] = set()
        self._started = False
        self.replaced = 0  # children killed or lost and replaced

    async def __aenter__(self) -> RenderPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        for _ in range(self.config.processes):
            self._idle.put_nowait(await self._spawn())

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for child in list(self._children):
            child.kill()
            await self._reap(child)
        for task in list(self._reaping):
            task.cancel()
        self._children.clear()
        self._idle = asyncio.Queue()

    def pids(self) -> list[int]:
        return sorted(c.process.pid for c in self._children)

    async def render(self, key: str, sources: list[str], variables: dict[str, Any]) -> list[str]:
        """The rendered messages; raises :class:`RenderFailed`."""
        strikes, until = self._strikes.get(key, (0, 0.0))
        if until > time.monotonic():
            raise RenderFailed(
                "timeout",
                f"timed out in its last {strikes} renders; not rendered again for "
                f"{until - time.monotonic():.0f} s",
            )
        child = await self._idle.get()
        try:
            reply = await asyncio.wait_for(child.ask(key, sources, variables), self.config.timeout)
        except TimeoutError:
            self._replace(child)
            self._strike(key, strikes)
            raise RenderFailed(
                "timeout", f"rendering took longer than {self.config.timeout:g} s"
            ) from None
        except (ConnectionError, asyncio.IncompleteReadError, OSError, ValueError) as exc:
            self._replace(child)
            raise RenderFailed("crashed", f"the render process died ({exc})") from None
        except BaseException:  # cancelled mid-render: the child's pipe state is unknown
            self._replace(child)
            raise
        self._strikes.pop(key, None)
        if "ok" in reply:
            self._idle.put_nowait(child)
            return [str(text) for text in reply["ok"]]
        if reply.get("error") == "memory":
            self._replace(child)  # it exits after a MemoryError
        else:
            self._idle.put_nowait(child)
        raise RenderFailed(str(reply.get("error")), str(reply.get("message")))

    def _strike(self, key: str, strikes: int) -> None:
        strikes += 1
        until = time.monotonic() + COOLDOWN_SECONDS if strikes >= STRIKES else 0.0
        self._strikes[key] = (strikes, until)
        if len(self._strikes) > 10_000:
            self._strikes.pop(next(iter(self._strikes)))

    def _replace(self, child: _Child) -> None:
        child.kill()
        self._children.discard(child)
        self.replaced += 1
        task = asyncio.create_task(self._respawn(child))
        self._reaping.add(task)
        task.add_done_callback(self._reaping.discard)

    async def _respawn(self, dead: _Child) -> None:
        await self._reap(dead)
        while self._started:
            try:
                fresh = await self._spawn()
            except OSError as exc:
                log.error("cannot start a render process (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if not self._started:
                fresh.kill()
                await self._reap(fresh)
                return
            self._idle.put_nowait(fresh)
            return

    async def _spawn(self) -> _Child:
        cfg = self.config
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "processors.templates.child",
            str(cfg.memory_mb),
            str(cfg.max_output),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        child = _Child(process)
        self._children.add(child)
        return child

    async def _reap(self, child: _Child) -> None:
        with contextlib.suppress(ProcessLookupError, asyncio.TimeoutError):
            await asyncio.wait_for(child.process.wait(), 5)
