"""What every handler of ``promptmill serve`` shares, and how it answers.

:class:`Serve` holds the long-lived parts (Redis records, blob store, Kafka client, audit
log, key store); handlers find it on the application under :data:`SERVE`. Answers are
JSON in OpenAI's shapes; every error is OpenAI's envelope (:func:`fail`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import orjson
from aiohttp import web

from producers.client import Client
from schemas.audit import Actor
from schemas.openai import MAX_FILE_BYTES, MAX_REQUESTS, BudgetUse, error_body
from topics.audit import AuditLog
from topics.batch_index import BatchIndex
from topics.blobs import BlobStore
from topics.budgets import Budgets
from topics.keys import ApiKey, KeyStore, Role
from topics.metrics import Registry
from topics.objects import Objects
from topics.redis import RedisClient


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = MAX_FILE_BYTES
    max_requests: int = MAX_REQUESTS
    max_line_bytes: int = 1_000_000
    lease_seconds: float = 15.0  # a replica's hold on a batch's submission (see runner)


class ServeMetrics:
    """What ``serve`` counts, on its ``/metrics``."""

    def __init__(self, registry: Registry) -> None:
        self.requests = registry.counter(
            "promptmill_serve_requests_total",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
        )
        self.upload_bytes = registry.counter(
            "promptmill_serve_upload_bytes_total", "Bytes of batch files uploaded and stored."
        )
        self.upload_lines = registry.counter(
            "promptmill_serve_upload_requests_total", "Request lines in uploaded batch files."
        )
        self.upload_seconds = registry.counter(
            "promptmill_serve_upload_seconds_total", "Time spent receiving uploads."
        )
        self.batches = registry.counter(
            "promptmill_serve_batches_total",
            "Batches created, by their first outcome.",
            ["outcome"],
        )
        self.jobs_submitted = registry.counter(
            "promptmill_serve_jobs_submitted_total", "Jobs published to the jobs topic."
        )

    def uploaded(self, size: int, requests: int, seconds: float) -> None:
        self.upload_bytes.inc(size)
        self.upload_lines.inc(requests)
        self.upload_seconds.inc(seconds)


@dataclass
class Serve:
    redis: RedisClient
    prefix: str
    keys: KeyStore
    objects: Objects
    blobs: BlobStore
    client: Client
    index: BatchIndex
    audit: AuditLog
    registry: Registry
    stats: ServeMetrics
    budgets: Budgets
    limits: Limits = field(default_factory=Limits)

    async def budgets_of(self, fields: dict[str, str]) -> list[BudgetUse] | None:
        """What the batch's tenant and key have spent of their budgets (if they have any)."""
        uses = await self.budgets.use(fields["tenant"], fields.get("key_id") or None)
        return uses or None


class Runs(Protocol):
    async def launch(self, batch_id: str) -> None: ...


SERVE: web.AppKey[Serve] = web.AppKey("serve", Serve)
RUNNER: web.AppKey[Runs] = web.AppKey("runner", Runs)
KEY = "promptmill.key"


def serve_of(request: web.Request) -> Serve:
    return request.app[SERVE]


def caller(request: web.Request, role: Role) -> ApiKey:
    """The request's key, which must hold ``role`` (else 403)."""
    key: ApiKey = request[KEY]
    if not key.has(role):
        fail(
            403,
            f"this API key has the role {key.role.value}; this needs {role.value}",
            type_="permission_error",
            code="insufficient_role",
        )
    return key


def scope(key: ApiKey) -> str | None:
    """The tenant whose objects ``key`` sees (``None``: an admin sees every tenant)."""
    return None if key.has(Role.ADMIN) else key.tenant


def actor(key: ApiKey) -> Actor:
    return Actor(key_id=key.key_id, tenant=key.tenant, role=key.role.value)


def answer(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


class ApiError(Exception):
    """Ends a handler with an OpenAI-shaped error (the middleware answers it)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


def fail(
    status: int,
    message: str,
    *,
    code: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
) -> NoReturn:
    """Stop the handler with OpenAI's error envelope."""
    raise ApiError(status, error_body(message, type_=type_, param=param, code=code))


def not_found(kind: str, object_id: str) -> NoReturn:
    fail(404, f"No such {kind}: {object_id[:200]!r}", code="not_found", param="id")
