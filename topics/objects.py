"""Files and batches of the HTTP front door, as records in Redis (their bytes: the blob store).

``promptmill serve`` replicas share no memory: every file and batch is a record here, and
the output-file processor updates the same records. Ids are 128 random bits (``file-…``,
``batch_…``), so they cannot be guessed; every record names its tenant, and a caller of
another tenant is answered as if it did not exist (:meth:`Objects.file` and
:meth:`Objects.batch` take the caller's tenant, ``None`` only for admins).

A batch's record is a hash in its batch id's hash slot (beside the batch index and the
tracker's counters), and its status moves only along OpenAI's transitions, each one
atomic (:meth:`Objects.transition`), so a cancel racing the finalizer ends one way.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.openai import BatchError, FileObject
from topics.redis import LuaScript, RedisClient, tagged, text

TTL_SECONDS = 30 * 24 * 3600
FILE_PREFIX = "file-"
BATCH_PREFIX = "batch_"

# KEYS: the batch hash. ARGV: new status, now, number of allowed old statuses, the allowed
# old statuses, then field/value pairs to set with it. Returns the old status if the move
# was made, else {false, current status}.
TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, ''} end
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[2])
    for j = 4 + n, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[j], ARGV[j + 1]) end
    return {1, current}
  end
end
return {0, current}
"""


def new_file_id() -> str:
    return FILE_PREFIX + secrets.token_hex(16)


def new_batch_id() -> str:
    return BATCH_PREFIX + secrets.token_hex(16)


class FileRecord(BaseModel):
    """A stored file: what OpenAI shows, plus its owner and what validation found."""

    model_config = ConfigDict(extra="forbid")

    file: FileObject
    tenant: str
    key_id: str | None = None
    blob: str
    requests: int = 0  # lines that are requests
    errors: list[BatchError] = Field(default_factory=list)  # the first MAX_ERRORS
    error_count: int = 0
    batch_id: str | None = None  # for an output or error file: its batch


def batch_key(prefix: str, batch_id: str) -> str:
    return tagged(prefix, batch_id, "object")


def cancelled_key(prefix: str) -> str:
    """Cancelled batch ids by time (a sorted set the prompt workers follow)."""
    return tagged(prefix, "cancelled", "batches")


class Objects:
    """The records of files and batches, scoped to tenants."""

    def __init__(self, redis: RedisClient, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._transition = LuaScript(redis, TRANSITION)

    def _file_key(self, file_id: str) -> str:
        return tagged(self._prefix, file_id, "file")

    def _listing(self, tenant: str, kind: str) -> str:
        return tagged(self._prefix, "t:" + tenant, kind)

    async def put_file(self, record: FileRecord) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self._file_key(record.file.id), record.model_dump_json(), ex=TTL_SECONDS)
            listing = self._listing(record.tenant, "files")
            pipe.zadd(listing, {record.file.id: time.time_ns() // 1000})
            pipe.expire(listing, TTL_SECONDS)
            await pipe.execute()

    async def file(self, file_id: str, tenant: str | None) -> FileRecord | None:
        """The file, if it exists and ``tenant`` may see it (``None``: any tenant)."""
        if not file_id.startswith(FILE_PREFIX):
            return None
        raw = await self._redis.get(self._file_key(file_id))
        if raw is None:
            return None
        try:
            record = FileRecord.model_validate_json(raw)
        except ValidationError:
            return None
        return record if tenant is None or record.tenant == tenant else None

    async def delete_file(self, record: FileRecord) -> None:
        await self._redis.delete(self._file_key(record.file.id))
        await self._redis.zrem(self._listing(record.tenant, "files"), record.file.id)

    async def files(
        self, tenant: str, *, after: str | None, limit: int, newest_first: bool
    ) -> list[FileRecord]:
        ids = await self._page(self._listing(tenant, "files"), after, limit, newest_first)
        found = [await self.file(i, tenant) for i in ids]
        return [f for f in found if f is not None]

    async def create_batch(self, batch_id: str, tenant: str, fields: dict[str, Any]) -> None:
        now = int(time.time())
        key = batch_key(self._prefix, batch_id)
        values: dict[Any, Any] = {k: _str(v) for k, v in fields.items()} | {
            "tenant": tenant,
            "status": "validating",
            "created_at": str(now),
        }
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=values)
            pipe.expire(key, TTL_SECONDS)
            listing = self._listing(tenant, "batches")
            pipe.zadd(listing, {batch_id: time.time_ns() // 1000})
            pipe.expire(listing, TTL_SECONDS)
            await pipe.execute()

    async def batch(self, batch_id: str, tenant: str | None) -> dict[str, str] | None:
        """The batch's fields, if it exists and ``tenant`` may see it (``None``: any)."""
        if not batch_id.startswith(BATCH_PREFIX):
            return None
        raw = await self._redis.hgetall(batch_key(self._prefix, batch_id))
        if not raw:
            return None
        fields = {text(k): text(v) for k, v in raw.items()}
        return fields if tenant is None or fields.get("tenant") == tenant else None

    async def batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> tuple[list[str], bool]:
        """Batch ids of ``tenant``, newest first, after the id ``after``; and whether more."""
        ids = await self._page(self._listing(tenant, "batches"), after, limit + 1, True)
        return ids[:limit], len(ids) > limit

    async def set_batch(self, batch_id: str, **fields: Any) -> None:
        values: dict[Any, Any] = {k: _str(v) for k, v in fields.items()}
        await self._redis.hset(batch_key(self._prefix, batch_id), mapping=values)

    async def set_batch_once(self, batch_id: str, field: str, value: str) -> str:
        """Set ``field`` unless it is set; the value it has afterwards."""
        key = batch_key(self._prefix, batch_id)
        await self._redis.hsetnx(key, field, value)
        found = await self._redis.hget(key, field)
        return text(found) if found is not None else value

    async def transition(
        self, batch_id: str, to: str, allowed: Sequence[str], **fields: Any
    ) -> tuple[bool, str]:
        """Move the batch to status ``to`` if it is in one of ``allowed`` (setting
        ``<to>_at`` and ``fields`` with it): (whether it moved, the status before)."""
        args: list[Any] = [to, int(time.time()), len(allowed), *allowed]
        for name, value in fields.items():
            args += [name, _str(value)]
        moved, status = await self._transition([batch_key(self._prefix, batch_id)], args)
        return bool(moved), text(status)

    async def mark_cancelled(self, batch_id: str) -> None:
        """Tell the workers to skip the batch's jobs that have not run yet."""
        await self._redis.zadd(cancelled_key(self._prefix), {batch_id: time.time()})

    async def _page(
        self, listing: str, after: str | None, limit: int, newest_first: bool
    ) -> list[str]:
        """Up to ``limit`` members of a sorted listing that come after member ``after``."""
        start = 0
        if after is not None:
            rank = await (
                self._redis.zrevrank(listing, after)
                if newest_first
                else self._redis.zrank(listing, after)
            )
            if rank is None:
                return []
            start = int(rank) + 1  # type: ignore[arg-type]
        read = self._redis.zrevrange if newest_first else self._redis.zrange
        return [text(m) for m in await read(listing, start, start + limit - 1)]


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return str(value)
