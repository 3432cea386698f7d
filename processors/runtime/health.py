"""The worker's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz``.

``/healthz`` answers while the event loop runs (a stuck loop fails the liveness probe);
``/readyz`` answers 200 only while the worker is consuming (group joined, partitions
assigned or the group is idle, registry caught up), else 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from topics.metrics import Registry

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    """Serves the endpoints on ``host:port`` (port 0: any free port) until stopped."""

    def __init__(self, registry: Registry, ready: Callable[[], bool], host: str, port: int) -> None:
        self._registry = registry
        self._ready = ready
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except OSError as exc:  # a busy port must not stop the worker
            log.warning(
                "cannot serve metrics on %s:%d (%s); continuing without",
                self._host,
                self._port,
                exc,
            )
            await runner.cleanup()
            return
        self._runner = runner
        port = runner.addresses[0][1]
        self.url = f"http://{self._host}:{port}"
        log.info("metrics and health on %s/metrics, /healthz, /readyz", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._registry.render().encode(), headers={"Content-Type": CONTENT_TYPE}
        )

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")
