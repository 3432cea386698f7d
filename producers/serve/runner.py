"""Submitting a created batch's jobs, so that a ``kill -9`` of ``serve`` loses none.

``POST /v1/batches`` answers at once (status ``validating``); a task then fails the batch
if its file had invalid lines, or asks the batch tracker to stream its terminal records,
moves it to ``in_progress`` and publishes one job per line, then the manifest. While it
runs it holds a lease on the batch in Redis (renewed every few seconds). If the replica
dies, the lease lapses and any replica's sweeper takes the batch over and submits it
again from the start: job ids are the batch id and line number, so a job published twice
is one job to every consumer (the tracker and the output file count each job id once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from producers.reader import InputFormat, LineError, LineParser
from producers.serve.context import Serve
from schemas import PromptJob
from schemas.openai import BatchError
from topics.batch_index import STREAM_FIELD, counters_key
from topics.blobs import lines
from topics.objects import TTL_SECONDS, FileRecord
from topics.redis import REDIS_ERRORS, LuaScript, tagged, text
from topics.tasks import cancel

log = logging.getLogger(__name__)
# a lease (PROMPTMILL_SERVE_LEASE_SECONDS) is renewed, and lapsed ones swept, every third of it
RENEWALS_PER_LEASE = 3

# KEYS: the leases (sorted set: batch id -> lease deadline in ms). ARGV: batch id, now, new
# deadline. Takes the lease if it has lapsed (or there is none when ARGV[4] is '1').
TAKE = """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if deadline and tonumber(deadline) > tonumber(ARGV[2]) then return 0 end
if not deadline and ARGV[4] ~= '1' then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""


class BatchRunner:
    """Runs the submission of batches, each under a lease (see the module docstring)."""

    def __init__(self, serve: Serve) -> None:
        self._serve = serve
        self._leases = tagged(serve.prefix, "serve", "submitting")
        self._take = LuaScript(serve.redis, TAKE)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._lease_seconds = serve.limits.lease_seconds
        self._every = self._lease_seconds / RENEWALS_PER_LEASE

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(), name="batch-sweeper")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        if self._sweeper is not None:
            tasks.append(self._sweeper)
            self._sweeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def launch(self, batch_id: str) -> None:
        """Take the new batch's lease and submit it in the background."""
        if await self._lease(batch_id, new=True):
            self._spawn(batch_id)

    def _spawn(self, batch_id: str) -> None:
        task = asyncio.create_task(self._run(batch_id), name=f"submit-{batch_id}")
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))

    async def _lease(self, batch_id: str, *, new: bool) -> bool:
        now = int(time.time() * 1000)
        args = [batch_id, now, now + int(self._lease_seconds * 1000), "1" if new else "0"]
        return bool(await self._take([self._leases], args))

    async def _run(self, batch_id: str) -> None:
        renew = asyncio.create_task(self._renew(batch_id))
        try:
            await self._submit(batch_id)
            await self._serve.redis.zrem(self._leases, batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # the lease lapses and a sweeper tries again
            log.exception("batch %s: submission failed; it will be retried", batch_id)
        finally:
            await cancel(renew)

    async def _renew(self, batch_id: str) -> None:
        while True:
            await asyncio.sleep(self._every)
            deadline = int((time.time() + self._lease_seconds) * 1000)
            with contextlib.suppress(*REDIS_ERRORS):
                await self._serve.redis.zadd(self._leases, {batch_id: deadline}, xx=True)

    async def _sweep(self) -> None:
        """Take over batches whose submitting replica stopped renewing its lease."""
        while True:
            await asyncio.sleep(self._every)
            try:
                now = int(time.time() * 1000)
                lapsed = await self._serve.redis.zrangebyscore(self._leases, 0, now)
                for raw in lapsed:
                    batch_id = text(raw)
                    if batch_id not in self._tasks and await self._lease(batch_id, new=False):
                        log.info("batch %s: taking over its submission", batch_id)
                        self._spawn(batch_id)
            except REDIS_ERRORS as exc:
                log.warning("batch sweeper: Redis unavailable (%s)", exc)

    async def _submit(self, batch_id: str) -> None:
        serve = self._serve
        fields = await serve.objects.batch(batch_id, None)
        if fields is None or fields.get("submitted") == "1":
            return
        tenant = fields["tenant"]
        record = await serve.objects.file(fields["input_file_id"], tenant)
        if record is None or record.error_count:
            errors = record.errors if record else [_gone(fields["input_file_id"])]
            await serve.objects.transition(
                batch_id,
                "failed",
                ["validating"],
                errors={"object": "list", "data": [e.model_dump() for e in errors]},
            )
            serve.stats.batches.inc(outcome="failed")
            return
        counters = counters_key(serve.prefix, batch_id, 1)
        await serve.redis.hset(counters, STREAM_FIELD, "1")
        await serve.redis.expire(counters, TTL_SECONDS)
        await serve.objects.transition(
            batch_id, "in_progress", ["validating"], total=record.requests
        )
        parser = LineParser(
            batch_id=batch_id,
            tenant=tenant,
            fmt=InputFormat.OPENAI_BATCH,
            key_id=fields.get("key_id") or None,
        )
        report = await serve.client.submit_items(
            self._jobs(record, parser),
            batch_id=batch_id,
            run=1,
            tenant=tenant,
            source=record.file.id,
            input_format=InputFormat.OPENAI_BATCH,
        )
        serve.stats.jobs_submitted.inc(report.manifest.submitted)
        serve.stats.batches.inc(outcome="submitted")
        await serve.objects.set_batch(batch_id, submitted="1")
        log.info("batch %s: %d jobs submitted", batch_id, report.manifest.submitted)

    async def _jobs(
        self, record: FileRecord, parser: LineParser
    ) -> AsyncIterator[PromptJob | LineError]:
        number = 0
        async for line in lines(self._serve.blobs.get(record.blob)):
            number += 1
            item = parser.parse(number, line.removesuffix(b"\r"))
            if item is not None:
                yield item


def _gone(file_id: str) -> BatchError:
    return BatchError(
        code="file_not_found",
        message=f"the input file {file_id} was deleted",
        param="input_file_id",
    )
