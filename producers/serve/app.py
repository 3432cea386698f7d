"""``promptmill serve``: the OpenAI-compatible Files and Batches API over HTTP.

Stateless: every file and batch is a record in Redis and a blob in the blob store, every
job goes to Kafka, so replicas scale out behind any load balancer. Every ``/v1`` route
needs an API key (``Authorization: Bearer pm-…``) that decides the tenant and the roles;
``/healthz``, ``/readyz``, ``/metrics`` and ``/openapi.json`` are open.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from producers.serve import batches, files
from producers.serve.context import KEY, RUNNER, SERVE, ApiError, Serve, answer, fail
from producers.serve.openapi import document
from producers.serve.runner import BatchRunner
from schemas.openai import error_body
from topics.redis import REDIS_ERRORS

log = logging.getLogger(__name__)
OPEN = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(serve: Serve) -> web.Application:
    """The application with every route; the runner starts and stops with it."""
    app = web.Application(middlewares=[_errors, _auth], client_max_size=1 << 20)
    app[SERVE] = serve
    runner = BatchRunner(serve)
    app[RUNNER] = runner

    async def lifecycle(_: web.Application):  # type: ignore[no-untyped-def]
        await runner.start()
        yield
        await runner.stop()

    app.cleanup_ctx.append(lifecycle)
    routes = [
        web.post("/v1/files", files.upload),
        web.get("/v1/files", files.list_files),
        web.get("/v1/files/{file_id}", files.retrieve),
        web.get("/v1/files/{file_id}/content", files.content),
        web.delete("/v1/files/{file_id}", files.delete),
        web.post("/v1/batches", batches.create),
        web.get("/v1/batches", batches.list_batches),
        web.get("/v1/batches/{batch_id}", batches.retrieve),
        web.post("/v1/batches/{batch_id}/cancel", batches.cancel),
        web.get("/v1/batches/{batch_id}/results", batches.results),
        web.get("/healthz", _healthz),
        web.get("/readyz", _readyz),
        web.get("/metrics", _metrics),
        web.get("/openapi.json", _openapi),
    ]
    app.add_routes(routes)
    return app


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """HTTPS when both a certificate and a key are given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("HTTPS needs both PROMPTMILL_SERVE_TLS_CERT and PROMPTMILL_SERVE_TLS_KEY")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as exc:
        status = exc.status
        return answer(exc.body, exc.status)
    except web.HTTPException as exc:  # aiohttp's own (404 route, 405 method, 413 body)
        status = exc.status
        body = error_body(exc.reason, code=exc.reason.lower().replace(" ", "_"))
        return answer(body, exc.status)
    except REDIS_ERRORS as exc:
        status = 503
        log.warning("%s %s: Redis unavailable: %s", request.method, request.path, exc)
        return answer(
            error_body(
                "the service's store is unavailable; try again",
                type_="server_error",
                code="unavailable",
            ),
            503,
        )
    finally:
        request.app[SERVE].stats.requests.inc(route=name, status=str(status))
        log.debug(
            "%s %s %d in %.1f ms",
            request.method,
            request.path,
            status,
            (time.monotonic() - started) * 1000,
        )


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        fail(
            401,
            "missing API key: send Authorization: Bearer <key>",
            type_="invalid_request_error",
            code="missing_api_key",
        )
    key = await request.app[SERVE].keys.authenticate(secret.strip())
    if key is None:
        fail(
            401,
            "invalid, revoked or expired API key",
            type_="invalid_request_error",
            code="invalid_api_key",
        )
    request[KEY] = key
    return await handler(request)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(request: web.Request) -> web.Response:
    try:
        await request.app[SERVE].redis.ping()
    except REDIS_ERRORS:
        return web.Response(status=503, text="redis unavailable\n")
    return web.Response(text="ready\n")


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[SERVE].registry.render()
    return web.Response(text=body, content_type="text/plain", charset="utf-8")


async def _openapi(request: web.Request) -> web.Response:
    return answer(document())
