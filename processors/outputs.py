"""The output-file processor: a finished front-door batch's output and error files.

It consumes the batches topic. When the batch tracker announces that every job of a batch
created through ``promptmill serve`` is terminal, it moves the batch to ``finalizing``,
writes its terminal records -- which the tracker streamed into Redis, each job once --
as OpenAI's Batch output format: completions to the output file, failures to the error
file, and then moves the batch to ``completed`` (or ``cancelled``, if it was cancelled).

Crash-safe by construction: the file ids are fixed once per batch (set-if-unset), a blob
appears whole or not at all and is rewritten identically, and the done event's offset is
committed only after the final status is set. A worker killed at any point leaves the
event to be handled again, which writes the same files once more. A download costs time
in proportion to the batch: the files are assembled from the batch's own stream, never
from the shared topics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import orjson
from pydantic import ValidationError

from processors.retry import Backoff, until_redis_answers
from processors.runtime import InRecord, Outcome
from processors.runtime.deadletters import About, DeadLetters
from schemas import BatchDone, Completion, Failure, Stage
from schemas.batches import batch_record
from schemas.openai import FileObject, batch_output_line
from schemas.results import terminal_record
from topics import TopicCatalog, TopicKind
from topics.batch_index import read_lines
from topics.blobs import BlobStore
from topics.objects import FileRecord, Objects, new_file_id
from topics.redis import REDIS_ERRORS, RedisClient

log = logging.getLogger(__name__)
READ_COUNT = 1000
BLOB_ATTEMPTS = 6  # with the backoff: about a minute of a blob store that fails


class BlobFailed(Exception):
    """The blob store failed a write (its error is the cause)."""


class BlobStoreDown(Exception):
    """The batch's files could not be written after every attempt."""

    def __init__(self, error: dict[str, str]) -> None:
        super().__init__(error["message"])
        self.error = error


class OutputFiles:
    """Handles records of the batches topic (see the module docstring)."""

    name = "outputs"

    def __init__(
        self,
        catalog: TopicCatalog,
        redis: RedisClient,
        prefix: str,
        objects: Objects,
        blobs: BlobStore,
        backoff: Backoff | None = None,
    ) -> None:
        self._dead = DeadLetters(catalog.name(TopicKind.FAILURES), Stage.BATCHES)
        self._redis = redis
        self._prefix = prefix
        self._objects = objects
        self._blobs = blobs
        self.written = 0  # batches whose files this worker wrote
        self._backoff = backoff or Backoff(1.0, 30.0)

    async def start(self) -> None:
        await self._blobs.start()

    async def stop(self) -> None:
        await self._blobs.stop()

    async def handle(self, record: InRecord) -> Sequence[Outcome]:
        event = batch_record(record.value or b"")
        if not isinstance(event, BatchDone) or event.run != 1:
            return []
        await until_redis_answers(lambda: self._finish(event.batch_id), "output files")
        return []

    def dead_letter(self, record: InRecord, error: BaseException) -> Outcome:
        about = About(job_id=f"{record.topic}:{record.partition}:{record.offset}")
        return self._dead.of_error(record, error, about)

    async def _finish(self, batch_id: str) -> None:
        fields = await self._objects.batch(batch_id, None)
        if fields is None:
            return  # not a front-door batch
        moved, status = await self._objects.transition(
            batch_id, "finalizing", ["in_progress", "cancelling"]
        )
        if not moved and status != "finalizing":
            return  # already final (this event was redelivered after the end)
        tenant = fields["tenant"]
        try:
            output, errors = await self._write_both(batch_id, tenant)
        except BlobStoreDown as exc:  # the batch must end: failed, its results still streamable
            await self._objects.transition(
                batch_id,
                "failed",
                ["finalizing"],
                errors={"object": "list", "data": [exc.error]},
            )
            return
        final = "cancelled" if fields.get("cancel_requested") == "1" else "completed"
        files = {"output_file_id": output, "error_file_id": errors}
        await self._objects.transition(
            batch_id, final, ["finalizing"], **{k: v for k, v in files.items() if v}
        )
        self.written += 1
        log.info("batch %s: %s (output %s, errors %s)", batch_id, final, output, errors)

    async def _write_both(self, batch_id: str, tenant: str) -> tuple[str | None, str | None]:
        """Write the output and error files, retrying a failing blob store for a while."""
        for attempt in range(1, BLOB_ATTEMPTS + 1):
            try:
                output = await self._write(batch_id, tenant, "output_file_id", Completion)
                errors = await self._write(batch_id, tenant, "error_file_id", Failure)
                return output, errors
            except BlobFailed as failed:  # the blob store: S3 down, a full disk
                exc = failed.__cause__ or failed
                log.warning(
                    "batch %s: writing its files failed (%s), attempt %d", batch_id, exc, attempt
                )
                if attempt == BLOB_ATTEMPTS:
                    message = f"the output files could not be written: {str(exc)[:300]}"
                    raise BlobStoreDown(
                        {"code": "output_write_failed", "message": message}
                    ) from exc
                await asyncio.sleep(self._backoff.delay(attempt))
        raise AssertionError("unreachable")

    async def _write(
        self, batch_id: str, tenant: str, field: str, kind: type[Completion | Failure]
    ) -> str | None:
        """Write the batch's records of ``kind`` to its file named by ``field`` (the id is
        fixed the first time); the file id, or ``None`` when there are none."""
        count = 0

        redis_error: BaseException | None = None

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal count, redis_error
            try:
                async for batch in self._records(batch_id, kind):
                    count += len(batch)
                    yield b"".join(batch_output_line(r) + b"\n" for r in batch)
            except REDIS_ERRORS as exc:
                redis_error = exc
                raise

        # fixed once, under a field of its own: the batch shows it only if the file exists
        file_id = await self._objects.set_batch_once(batch_id, f"next_{field}", new_file_id())
        blob = f"files/{file_id}"
        try:
            size = await self._blobs.put(blob, chunks())
            if count == 0:
                await self._blobs.delete(blob)
        except Exception as exc:
            if redis_error is not None:
                raise redis_error from None  # Redis, not the store: the caller waits for it
            raise BlobFailed() from exc
        if count == 0:
            return None
        suffix = "output" if kind is Completion else "errors"
        await self._objects.put_file(
            FileRecord(
                file=FileObject(
                    id=file_id,
                    bytes=size,
                    created_at=int(time.time()),
                    filename=f"{batch_id}_{suffix}.jsonl",
                    purpose="batch_output",
                ),
                tenant=tenant,
                blob=blob,
                requests=count,
                batch_id=batch_id,
            )
        )
        return file_id

    async def _records(
        self, batch_id: str, kind: type[Completion | Failure]
    ) -> AsyncIterator[list[Completion | Failure]]:
        """The batch's streamed terminal records of ``kind``, a page at a time."""
        after: str | None = None
        while True:
            entries = await read_lines(self._redis, self._prefix, batch_id, after, READ_COUNT)
            page: list[Completion | Failure] = []
            for cursor, raw in entries:
                after = cursor
                try:
                    record = terminal_record(orjson.loads(raw))
                except (orjson.JSONDecodeError, ValidationError):
                    continue
                if isinstance(record, kind):
                    page.append(record)
            if page:
                yield page
            if len(entries) < READ_COUNT:
                return
