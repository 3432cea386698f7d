"""API keys: who a caller of ``promptmill serve`` is, which tenant it acts for, what it may do.

A key is ``pm-`` followed by 256 random bits (URL-safe base64); it is shown once, when it
is created, and only its SHA-256 is stored. Each key belongs to one tenant and holds roles:

* ``reader`` reads its tenant's files, batches and results;
* ``submitter`` also uploads and deletes files, creates and cancels batches;
* ``admin`` also manages keys and templates, and sees every tenant.

A key may also carry a model allow-list, an expiry and a USD budget per day or month
(RPM/TPM quotas and a budget of the whole tenant are its policy: :mod:`topics.budgets`).
Keys live in Redis (one hash of records by key id, one of key ids by hash);
``serve`` caches a lookup for at most :data:`CACHE_SECONDS`, so a revoked key stops working
on every replica within that time.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas import PromptmillError
from topics.redis import RedisClient, tagged, text

CACHE_SECONDS = 2.0
SECRET_PREFIX = "pm-"


class Role(StrEnum):
    READER = "reader"
    SUBMITTER = "submitter"
    ADMIN = "admin"


RANK = {Role.READER: 0, Role.SUBMITTER: 1, Role.ADMIN: 2}


class NoSuchKey(PromptmillError):
    """No key with that id."""


class ApiKey(BaseModel):
    """A key's record (never its secret)."""

    model_config = ConfigDict(extra="forbid")

    key_id: str
    tenant: str = Field(min_length=1, max_length=128)
    roles: list[Role]
    name: str = ""
    models: list[str] | None = None  # None: every model
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    budget_usd: float | None = Field(default=None, gt=0)
    budget_period: Literal["day", "month"] = "month"

    def has(self, role: Role) -> bool:
        """Whether the key holds ``role`` or one above it."""
        return any(RANK[mine] >= RANK[role] for mine in self.roles)

    @property
    def role(self) -> Role:
        """The highest role held."""
        return max(self.roles, key=RANK.__getitem__)

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def allows_model(self, model: str | None) -> bool:
        return self.models is None or (model is not None and model in self.models)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class KeyStore:
    """Create, look up, list and revoke keys (Redis)."""

    def __init__(self, redis: RedisClient, prefix: str) -> None:
        self._redis = redis
        self._records = tagged(prefix, "keys", "records")
        self._hashes = tagged(prefix, "keys", "hashes")
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def create(
        self,
        tenant: str,
        roles: list[Role],
        *,
        name: str = "",
        models: list[str] | None = None,
        expires_at: datetime | None = None,
        budget_usd: float | None = None,
        budget_period: Literal["day", "month"] = "month",
    ) -> tuple[str, ApiKey]:
        """A new key: (the secret, shown once; its record)."""
        secret = SECRET_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        secret = secret.rstrip("=")
        key = ApiKey(
            key_id="key_" + secrets.token_hex(8),
            tenant=tenant,
            roles=sorted(set(roles), key=RANK.__getitem__),
            name=name,
            models=models,
            created_at=datetime.now(UTC),
            expires_at=expires_at,
            budget_usd=budget_usd,
            budget_period=budget_period,
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._records, key.key_id, key.model_dump_json())
            pipe.hset(self._hashes, secret_hash(secret), key.key_id)
            await pipe.execute()
        return secret, key

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The usable key whose secret this is, or ``None`` (unknown, revoked, expired).
        Answers may be up to :data:`CACHE_SECONDS` old."""
        digest = secret_hash(secret)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            key = cached[1]
        else:
            key_id = await self._redis.hget(self._hashes, digest)
            key = await self.get(text(key_id)) if key_id is not None else None
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now + CACHE_SECONDS, key)
        return key if key is not None and key.usable() else None

    async def get(self, key_id: str) -> ApiKey | None:
        raw = await self._redis.hget(self._records, key_id)
        if raw is None:
            return None
        try:
            return ApiKey.model_validate_json(raw)
        except ValidationError:
            return None

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        found = []
        for raw in (await self._redis.hgetall(self._records)).values():
            try:
                key = ApiKey.model_validate_json(raw)
            except ValidationError:
                continue
            if tenant is None or key.tenant == tenant:
                found.append(key)
        return sorted(found, key=lambda k: k.created_at)

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke the key (it stops working within :data:`CACHE_SECONDS` everywhere)."""
        key = await self.get(key_id)
        if key is None:
            raise NoSuchKey(f"no key {key_id!r}")
        if key.revoked_at is None:
            key.revoked_at = datetime.now(UTC)
            await self._redis.hset(self._records, key_id, key.model_dump_json())
        return key
