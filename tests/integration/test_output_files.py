"""The output-file processor on a real Redis, with a blob store that fails: the batch ends
``failed`` with a named error after the retries, never stuck in ``finalizing``; a store
that recovers within the retries loses nothing."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime

import orjson
import pytest

from processors.outputs import OutputFiles
from processors.retry import Backoff
from processors.runtime import InRecord
from promptmill.dev.harness import Env
from schemas import BatchDone, Completion, encode
from topics.batch_index import STREAM_FIELD, counters_key, lines_key
from topics.blobs import BlobNotFound
from topics.objects import Objects, new_batch_id

pytestmark = [pytest.mark.timeout(60)]


class FlakyBlobs:
    """A blob store whose writes fail ``failures`` times, then work (in memory)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.blobs: dict[str, bytes] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        data = b"".join([chunk async for chunk in chunks])
        if self.failures > 0:
            self.failures -= 1
            raise OSError("No space left on device")
        self.blobs[key] = data
        return len(data)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        if key not in self.blobs:
            raise BlobNotFound(key)
        yield self.blobs[key]

    async def size(self, key: str) -> int | None:
        return len(self.blobs[key]) if key in self.blobs else None

    async def delete(self, key: str) -> None:
        self.blobs.pop(key, None)


async def _finished_batch(env: Env, objects: Objects) -> tuple[str, InRecord]:
    """A front-door batch in progress whose two jobs the tracker has streamed."""
    redis = env.redis()
    batch_id = new_batch_id()
    await objects.create_batch(batch_id, "acme", {"input_file_id": "file-x", "total": 2})
    await objects.transition(batch_id, "in_progress", ["validating"])
    await redis.hset(counters_key(env.prefix, batch_id, 1), STREAM_FIELD, "1")
    for i in range(2):
        completion = Completion(
            job_id=f"{batch_id}:{i + 1}", batch_id=batch_id, tenant="acme", model="m", text="hi"
        )
        await redis.xadd(lines_key(env.prefix, batch_id, 1), {"r": encode(completion)})
    await redis.aclose()
    done = BatchDone(batch_id=batch_id, total=2, completed=2, finished_at=datetime.now(UTC))
    return batch_id, InRecord("batches", 0, 7, batch_id.encode(), encode(done))


@pytest.mark.parametrize(("failures", "status"), [(2, "completed"), (99, "failed")])
async def test_a_failing_blob_store_ends_the_batch_one_way(
    env: Env, failures: int, status: str
) -> None:
    redis = env.redis()
    try:
        objects = Objects(redis, env.prefix)
        blobs = FlakyBlobs(failures)
        outputs = OutputFiles(env.catalog, redis, env.prefix, objects, blobs, Backoff(0.01, 0.02))
        batch_id, record = await _finished_batch(env, objects)
        assert await outputs.handle(record) == []
        fields = await objects.batch(batch_id, "acme")
        assert fields is not None and fields["status"] == status
        if status == "completed":
            (data,) = blobs.blobs.values()
            assert len(data.splitlines()) == 2 and "error_file_id" not in fields
            assert fields["output_file_id"] in next(iter(blobs.blobs))
        else:
            error = orjson.loads(fields["errors"])["data"][0]
            assert error["code"] == "output_write_failed"
            assert "No space left on device" in error["message"]
        assert await outputs.handle(record) == []  # redelivered: nothing changes
        assert (await objects.batch(batch_id, "acme") or {})["status"] == status
    finally:
        await redis.aclose()
