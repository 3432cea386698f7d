"""The batch tracker: counts each batch's terminal records once and announces when it is done.

It consumes the completions, failures and batches topics on the shared runtime. One Redis
script per record adds the job id to the batch's set and, only if it was new, bumps the
batch's counters, so redelivered records are never counted twice. When every job of the
manifest's total is terminal it publishes a :class:`~schemas.BatchDone` event, keyed by
batch id, to the batches topic: once, and again only if the record that completed the batch
is itself redelivered (the worker crashed before the event was acknowledged).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from processors.retry import until_redis_answers
from processors.runtime import InRecord, Outcome
from processors.runtime.deadletters import About, DeadLetters
from processors.runtime.ordered import PartitionOrder
from schemas import (
    BatchDone,
    BatchManifest,
    Completion,
    Failure,
    Header,
    Stage,
    encode,
)
from schemas.results import terminal_record
from topics import TopicCatalog, TopicKind
from topics.batch_index import BatchIndex, counters_key, jobs_key, lines_key
from topics.redis import LuaScript, RedisClient

TTL_SECONDS = 7 * 24 * 3600

# KEYS: counters hash, job-id set, lines stream. ARGV: kind, record position, then per kind:
# manifest: total | completion: job id, cached, prompt tokens, completion tokens, cost |
# failure: job id, code; then the record itself (streamed if the run asks for it, see
# topics.batch_index.counters_key); last: the keys' TTL in seconds.
# Returns {} or, when the done event is to be published, the counters.
TRACK = """
local kind, position = ARGV[1], ARGV[2]
if kind == 'manifest' then
  redis.call('HSET', KEYS[1], 'total', ARGV[3])
elseif redis.call('SADD', KEYS[2], ARGV[3]) == 1 then
  if kind == 'completion' then
    redis.call('HINCRBY', KEYS[1], 'completed', 1)
    redis.call('HINCRBY', KEYS[1], 'cached', ARGV[4])
    redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[5])
    redis.call('HINCRBY', KEYS[1], 'completion_tokens', ARGV[6])
    redis.call('HINCRBYFLOAT', KEYS[1], 'cost_usd', ARGV[7])
  else
    redis.call('HINCRBY', KEYS[1], 'failed:' .. ARGV[4], 1)
  end
  if redis.call('HEXISTS', KEYS[1], 'stream') == 1 then
    redis.call('XADD', KEYS[3], '*', 'r', ARGV[#ARGV - 1])
    redis.call('EXPIRE', KEYS[3], ARGV[#ARGV])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[#ARGV])
redis.call('EXPIRE', KEYS[2], ARGV[#ARGV])
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if not total or redis.call('SCARD', KEYS[2]) < total then return {} end
if redis.call('HSETNX', KEYS[1], 'done_by', position) == 0
   and redis.call('HGET', KEYS[1], 'done_by') ~= position then
  return {}
end
return redis.call('HGETALL', KEYS[1])
"""


class BatchTracker:
    """Handles records of the completions, failures and batches topics."""

    name = "batches"

    def __init__(
        self, catalog: TopicCatalog, redis: RedisClient, prefix: str, index: BatchIndex
    ) -> None:
        self._batches = catalog.name(TopicKind.BATCHES)
        self._dead = DeadLetters(catalog.name(TopicKind.FAILURES), Stage.BATCHES)
        self._prefix = prefix
        self._track = LuaScript(redis, TRACK)
        self._index = index
        self._order = PartitionOrder()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def handle(self, record: InRecord) -> Sequence[Outcome]:
        parsed = _parse(record.value)
        if parsed is None:
            return []  # not a record this tracker counts (a done event, a foreign record)
        batch_id, run, args, manifest = parsed
        if not batch_id:
            return []
        position = f"{record.topic}:{record.partition}:{record.offset}"
        keys = [
            counters_key(self._prefix, batch_id, run),
            jobs_key(self._prefix, batch_id, run),
            lines_key(self._prefix, batch_id, run),
        ]
        script_args = [args[0], position, *args[1:], record.value or b"", TTL_SECONDS]
        async with self._order(record):  # the first record of a job by offset is the one counted
            counters = await until_redis_answers(
                lambda: self._track(keys, script_args), "batch tracker"
            )
            if manifest is not None:  # for lookups by batch id (status, results, submit)
                await until_redis_answers(lambda: self._index.record(manifest), "batch index")
        if not counters:
            return []
        done = _done(batch_id, run, counters)
        await until_redis_answers(lambda: self._index.record_done(done), "batch index")
        return [
            Outcome(
                self._batches,
                encode(done),
                key=batch_id.encode(),
                headers=[
                    (Header.BATCH_ID.value, batch_id.encode()),
                    (Header.RUN.value, b"%d" % run),
                ],
            )
        ]

    def dead_letter(self, record: InRecord, error: BaseException) -> Outcome:
        # keyed by the record's position: it is no job of the batch, and never counts against it
        about = About(job_id=f"{record.topic}:{record.partition}:{record.offset}")
        return self._dead.of_error(record, error, about)


def _parse(
    value: bytes | None,
) -> tuple[str, int, list[Any], BatchManifest | None] | None:
    """(batch id, run, script arguments, the manifest if it is one) for a manifest,
    completion or failure record."""
    try:
        data = orjson.loads(value or b"")
        if isinstance(data, dict) and data.get("kind") == "manifest":
            manifest = BatchManifest.model_validate(data)
            return manifest.batch_id, manifest.run, ["manifest", manifest.total], manifest
        record = terminal_record(data)
    except (orjson.JSONDecodeError, ValidationError):
        return None
    if isinstance(record, Completion):
        usage = record.usage
        return (
            record.batch_id,
            record.run,
            [
                "completion",
                record.job_id,
                int(record.cached),
                usage.prompt_tokens,
                usage.completion_tokens,
                repr(record.cost_usd),
            ],
            None,
        )
    if isinstance(record, Failure):
        return (
            record.batch_id or "",
            record.run,
            ["failure", record.job_id, record.code.value],
            None,
        )
    return None


def _done(batch_id: str, run: int, flat: list[bytes]) -> BatchDone:
    fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
    return BatchDone(
        batch_id=batch_id,
        run=run,
        total=int(fields["total"]),
        completed=int(fields.get("completed", 0)),
        failed={
            k.removeprefix("failed:"): int(v) for k, v in fields.items() if k.startswith("failed:")
        },
        cached=int(fields.get("cached", 0)),
        prompt_tokens=int(fields.get("prompt_tokens", 0)),
        completion_tokens=int(fields.get("completion_tokens", 0)),
        cost_usd=float(fields.get("cost_usd", 0.0)),
        finished_at=datetime.now(UTC),
    )
