"""The reporting processor: windowed usage totals per tenant x template@version x model
(x the catalog's group and deployment, for routed completions), and the online evals'
pass rates in the same windows.

It consumes the completions, failures and evals topics on the shared runtime and keeps its
state in Redis, where one script per record does everything that must not be split by a
crash: add the job id (``eval:`` + it, for a score) to its batch's set and, only if it is
new, count the record into its window (requests, completions, failures by code, cache
hits, tokens, cost, a latency histogram; or a score's pass, score and assertions), bump
the window's revision and mark the window dirty with that revision.
Redelivered records after a ``kill -9`` therefore change nothing, and nothing counted
can be lost: the input offset is committed only after the script ran.

A flusher publishes dirty windows to the reports topic every ``flush_seconds`` (one
flusher at a time fleet-wide, by a Redis lock) and clears a window's dirty mark only if
no newer revision arrived while it was being published. A window is thus republished
after every change, at most once per flush, and readers keep its highest revision.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from processors.retry import until_redis_answers
from processors.runtime import InRecord, Outcome
from processors.runtime.deadletters import About, DeadLetters
from processors.runtime.ordered import PartitionOrder
from schemas import Completion, Failure, Stage, WindowReport, encode
from schemas.evals import EvalScore
from schemas.reports import (
    LATENCY_BOUNDS_MS,
    NONE,
    latency_bucket,
    percentile,
    template_label,
    window_key,
)
from schemas.results import terminal_record
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.metrics import Registry
from topics.redis import REDIS_ERRORS, LuaScript, RedisClient, tagged
from topics.tasks import cancel

log = logging.getLogger(__name__)

# KEYS: the batch's job-id set, the window hash, the dirty set.
# ARGV: member (the job id; "eval:" + it for a score), window key, TTL, tenant, template,
# model, group, deployment, window start, window seconds, kind, then per kind --
# completion: cached, prompt tokens, completion tokens, cost, latency bucket (-1: none) |
# failure: code | eval: passed, score, then (assertion type, passed) pairs. Returns 1 if
# counted, 0 if seen before.
COUNT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
local w = KEYS[2]
redis.call('HSETNX', w, 'tenant', ARGV[4])
redis.call('HSETNX', w, 'template', ARGV[5])
redis.call('HSETNX', w, 'model', ARGV[6])
redis.call('HSETNX', w, 'group', ARGV[7])
redis.call('HSETNX', w, 'deployment', ARGV[8])
redis.call('HSETNX', w, 'window_start', ARGV[9])
redis.call('HSETNX', w, 'window_seconds', ARGV[10])
if ARGV[11] == 'eval' then
  redis.call('HINCRBY', w, 'evaluated', 1)
  redis.call('HINCRBY', w, 'eval_passed', ARGV[12])
  redis.call('HINCRBYFLOAT', w, 'eval_score', ARGV[13])
  for i = 14, #ARGV - 1, 2 do
    redis.call('HINCRBY', w, 'an:' .. ARGV[i], 1)
    redis.call('HINCRBY', w, 'ap:' .. ARGV[i], ARGV[i + 1])
  end
else
  redis.call('HINCRBY', w, 'requests', 1)
end
if ARGV[11] == 'completion' then
  redis.call('HINCRBY', w, 'completions', 1)
  redis.call('HINCRBY', w, 'cache_hits', ARGV[12])
  redis.call('HINCRBY', w, 'prompt_tokens', ARGV[13])
  redis.call('HINCRBY', w, 'completion_tokens', ARGV[14])
  redis.call('HINCRBYFLOAT', w, 'cost_usd', ARGV[15])
  if ARGV[16] ~= '-1' then redis.call('HINCRBY', w, 'lat:' .. ARGV[16], 1) end
elseif ARGV[11] == 'failure' then
  redis.call('HINCRBY', w, 'failed:' .. ARGV[12], 1)
end
local revision = redis.call('HINCRBY', w, 'revision', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', w, ARGV[3])
redis.call('ZADD', KEYS[3], revision, ARGV[2])
return 1
"""

# KEYS: the dirty set. ARGV: pairs of (window key, revision published).
CLEAN = """
for i = 1, #ARGV, 2 do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 0
"""

# KEYS: the lock. ARGV: token.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class ReportingConfig:
    window_seconds: int = 60
    flush_seconds: float = 1.0
    ttl_seconds: int = 7 * 24 * 3600
    flush_batch: int = 500


class ReportingProcessor:
    """Handles records of the completions and failures topics."""

    name = "reporting"

    def __init__(
        self,
        conn: KafkaConnection,
        catalog: TopicCatalog,
        redis: RedisClient,
        prefix: str,
        config: ReportingConfig,
        registry: Registry,
    ) -> None:
        self._conn = conn
        self._reports = catalog.name(TopicKind.REPORTS)
        self._dead = DeadLetters(catalog.name(TopicKind.FAILURES), Stage.REPORTING)
        self._redis = redis
        self._prefix = prefix
        self._config = config
        self._count = LuaScript(redis, COUNT)
        self._clean = LuaScript(redis, CLEAN)
        self._unlock = LuaScript(redis, UNLOCK)
        self._producer: AIOKafkaProducer | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._token = uuid.uuid4().hex
        self._order = PartitionOrder()
        metrics = registry
        self._records = metrics.counter(
            "promptmill_report_records_total",
            "Terminal records seen by reporting, by whether they were counted or repeats.",
            ("counted",),
        )
        self._published = metrics.counter(
            "promptmill_report_windows_published_total", "Window reports published."
        )
        self.counted = 0
        self.repeats = 0

    async def start(self) -> None:
        if self._producer is not None:
            return
        self._producer = AIOKafkaProducer(
            **self._conn.client_options(), acks="all", enable_idempotence=True, linger_ms=20
        )
        await self._producer.start()
        self._flusher = asyncio.create_task(self._flush_loop(), name="report-flusher")

    async def stop(self) -> None:
        if self._flusher is not None:
            await cancel(self._flusher)
            self._flusher = None
            try:
                await self.flush()  # what this worker counted last goes out now
            except (*REDIS_ERRORS, KafkaError) as exc:  # still dirty in Redis: a later flush
                log.warning("final report flush failed, left to the next flusher: %s", exc)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def handle(self, record: InRecord) -> Sequence[Outcome]:
        counted = _count_args(record.value, self._config.window_seconds)
        if counted is None:
            return []  # not a job's terminal record (a downstream dead letter, a foreign record)
        batch_id, member, start, dims, tail = counted
        wkey = window_key(start, *dims)
        keys = [
            self._key("seen", batch_id),
            self._key("w", wkey),
            self._key("dirty"),
        ]
        args: list[Any] = [member, wkey, self._config.ttl_seconds, *dims, int(start.timestamp())]
        args += [self._config.window_seconds, *tail]
        async with self._order(record):  # the first record of a job by offset is the one counted
            new = await until_redis_answers(lambda: self._count(keys, args), "reporting", log=log)
        self._records.inc(counted=str(bool(new)).lower())
        if new:
            self.counted += 1
        else:
            self.repeats += 1
        return []

    def dead_letter(self, record: InRecord, error: BaseException) -> Outcome:
        about = About(job_id=f"{record.topic}:{record.partition}:{record.offset}")
        return self._dead.of_error(record, error, about)

    def _key(self, *parts: str) -> str:
        """Every reporting key is in one hash slot: one script touches a batch's seen set,
        a window and the dirty set."""
        return tagged(self._prefix, "report", *parts)

    async def flush(self) -> int:
        """Publish every dirty window once (if no other worker is flushing); how many."""
        lock = self._key("flush-lock")
        if not await self._redis.set(lock, self._token, nx=True, px=30_000):
            return 0
        published = 0
        try:
            while True:
                dirty: list[tuple[bytes, float]] = await self._redis.zrange(  # type: ignore[assignment]
                    self._key("dirty"), 0, self._config.flush_batch - 1, withscores=True
                )
                if not dirty:
                    return published
                await self._publish(dirty)
                published += len(dirty)
                if len(dirty) < self._config.flush_batch:
                    return published
        finally:
            await self._unlock([lock], [self._token])

    async def _publish(self, dirty: list[tuple[bytes, float]]) -> None:
        if self._producer is None:
            raise RuntimeError("the reporting processor is not started")
        pipe = self._redis.pipeline(transaction=False)
        for member, _ in dirty:
            pipe.hgetall(self._key("w", member.decode()))
        snapshots: list[dict[bytes, bytes]] = await pipe.execute()
        sends = []
        for snapshot in snapshots:
            if snapshot:
                report = window_report(snapshot)
                sends.append(
                    await self._producer.send(
                        self._reports, encode(report), key=report.key.encode()
                    )
                )
        await asyncio.gather(*sends)
        self._published.inc(len(sends))
        published: list[Any] = []
        for member, revision in dirty:
            published += [member, int(revision)]
        await self._clean([self._key("dirty")], published)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.flush_seconds)
            try:
                await self.flush()
            except (*REDIS_ERRORS, KafkaError) as exc:
                log.warning("report flush failed, will retry: %s", exc)
            except Exception:
                log.exception("report flush failed, will retry")


Dims = tuple[str, str, str, str, str]  # tenant, template@version, model, group, deployment
Counted = tuple[str, str, datetime, Dims, list[Any]]


def _count_args(value: bytes | None, window_seconds: int) -> Counted | None:
    """(batch id, member of its seen set, window start, dimensions, kind arguments) of a
    terminal record or an eval score."""
    try:
        data = orjson.loads(value or b"")
        if isinstance(data, dict) and data.get("kind") == "eval":
            return _eval_args(EvalScore.model_validate(data), window_seconds)
        record = terminal_record(data)
    except (orjson.JSONDecodeError, ValidationError):
        return None
    if isinstance(record, Completion):
        tail: list[Any] = [
            "completion",
            int(record.cached),
            record.usage.prompt_tokens,
            record.usage.completion_tokens,
            repr(record.cost_usd),
            -1 if record.cached else latency_bucket(record.latency_ms),
        ]
        start = _window(record.created_at, window_seconds)
        return record.batch_id, record.job_id, start, _dims(record), tail
    if isinstance(record, Failure):
        dims = (
            record.tenant or NONE,
            template_label(record.template, record.template_version),
            record.model or NONE,
            NONE,
            NONE,
        )
        start = _window(record.failed_at, window_seconds)
        return record.batch_id or NONE, record.job_id, start, dims, ["failure", record.code.value]
    return None


def _eval_args(score: EvalScore, window_seconds: int) -> Counted:
    """A score counts into its completion's window, once per job (its own member)."""
    tail: list[Any] = ["eval", int(score.passed), repr(score.score)]
    for graded in score.assertions:
        tail += [graded.type, int(graded.passed)]
    start = _window(score.completed_at, window_seconds)
    return score.batch_id, f"eval:{score.job_id}", start, _dims(score), tail


def _dims(of: Completion | EvalScore) -> Dims:
    """A completion's window dimensions, and its score's: the same, so both count into
    one window."""
    return (
        of.tenant,
        template_label(of.template, of.template_version),
        of.model,
        of.group or NONE,
        of.deployment or NONE,
    )


def _window(at: datetime, seconds: int) -> datetime:
    epoch = int(at.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def window_report(snapshot: dict[bytes, bytes]) -> WindowReport:
    """The report record of a window hash as the COUNT script keeps it."""
    fields = {k.decode(): v.decode() for k, v in snapshot.items()}
    histogram = {
        LATENCY_BOUNDS_MS[int(k[4:])]: int(v) for k, v in fields.items() if k.startswith("lat:")
    }
    return WindowReport(
        window_start=datetime.fromtimestamp(int(fields["window_start"]), UTC),
        window_seconds=int(fields["window_seconds"]),
        tenant=fields["tenant"],
        template=fields["template"],
        model=fields["model"],
        group=fields.get("group", NONE),
        deployment=fields.get("deployment", NONE),
        revision=int(fields["revision"]),
        requests=int(fields.get("requests", 0)),
        completions=int(fields.get("completions", 0)),
        failures={k[7:]: int(v) for k, v in fields.items() if k.startswith("failed:")},
        cache_hits=int(fields.get("cache_hits", 0)),
        prompt_tokens=int(fields.get("prompt_tokens", 0)),
        completion_tokens=int(fields.get("completion_tokens", 0)),
        cost_usd=float(fields.get("cost_usd", 0.0)),
        latency_histogram=histogram,
        latency_p50_ms=percentile(histogram, 0.5),
        latency_p95_ms=percentile(histogram, 0.95),
        evaluated=int(fields.get("evaluated", 0)),
        eval_passed=int(fields.get("eval_passed", 0)),
        eval_score_sum=float(fields.get("eval_score", 0.0)),
        assertion_counts={k[3:]: int(v) for k, v in fields.items() if k.startswith("an:")},
        assertion_passes={k[3:]: int(v) for k, v in fields.items() if k.startswith("ap:")},
    )
