"""The one worker runtime every processor runs on.

A :class:`Worker` consumes its topics in a consumer group (aiokafka), hands each record
to its :class:`Processor` with at most ``concurrency`` records in flight, publishes the
processor's outcome records with an idempotent producer, and commits each partition only
up to the first record whose outcome the broker has not acknowledged yet (see
:mod:`processors.runtime.offsets`). A processor error never kills the worker: it becomes
a dead-letter outcome, and every outcome is fitted to its topic's size limit first
(:mod:`processors.runtime.fit`). On stop it drains: no more fetching, in-flight records get
a grace period, the final offsets are committed and the group is left.

The consume loop never waits on the processor. When ``concurrency`` records are in flight
(all parked behind a rate limit, say) it waits for a slot at most a tenth of a second at a
time, so offsets keep being committed as records finish and a stop request is seen at
once; if that lasts, it polls now and then with its partitions paused, so the group does
not drop it for not polling. Commits run beside the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from processors.runtime.fit import OutcomeTooLarge, shrink, size_of
from processors.runtime.observe import RuntimeMetrics
from processors.runtime.offsets import OffsetTracker
from processors.runtime.records import InRecord, Outcome
from topics import KafkaConnection
from topics.limits import TopicLimits
from topics.metrics import Registry

log = logging.getLogger(__name__)
MAX_REQUEST_SIZE = 64 * 1024 * 1024  # the client-side cap; each topic's own limit is fitted to
FINAL_COMMIT_SECONDS = 10.0  # within Kubernetes' grace period after the drain
CLOSE_SECONDS = 10.0  # for closing the clients and the processor, after the final commit
POLL_SECONDS = 0.1  # the longest the loop waits before it looks at stop requests and commits
KEEPALIVE_POLL_SECONDS = 10.0  # well within any max_poll_interval


class Processor(Protocol):
    """What a worker runs: a handler from one record to its outcome records."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def handle(self, record: InRecord) -> Sequence[Outcome]:
        """Process one record; raise only for bugs (they become dead letters)."""
        ...

    def dead_letter(self, record: InRecord, error: BaseException) -> Outcome:
        """The failure outcome for a record whose handling raised ``error``."""
        ...


@dataclass(frozen=True)
class WorkerConfig:
    topics: list[str]
    group_id: str
    concurrency: int = 128
    drain_seconds: float = 25.0
    commit_interval: float = 0.5
    session_timeout_ms: int = 10000
    client_id: str = "promptmill-worker"


@dataclass
class WorkerStats:
    processed: int = 0
    dead_letters: int = 0
    commits: int = 0
    started_at: float = 0.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker._on_assigned(set(assigned))


class Worker:
    """Runs one processor over a consumer group until :meth:`request_stop`."""

    def __init__(
        self,
        conn: KafkaConnection,
        processor: Processor,
        config: WorkerConfig,
        registry: Registry,
    ) -> None:
        self._conn = conn
        self._processor = processor
        self._config = config
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._committed: dict[TopicPartition, int] = {}
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._paused = False
        self._free = asyncio.Event()  # set when a record finishes: a slot is free
        self._committing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self._limits = TopicLimits(conn)
        self._assigned = False  # the group gave this member its partitions (maybe none)
        self.failed = False  # stopped because a record could not be published
        self.stats = WorkerStats()
        self.metrics = RuntimeMetrics(registry, processor.name, lambda: len(self._tasks), self._lag)

    @property
    def ready(self) -> bool:
        """Consuming: the group has assigned this member (no rebalance under way) and no
        stop was requested."""
        return self._assigned and not self._stopping.is_set()

    def request_stop(self) -> None:
        """Stop fetching and drain (safe to call from a signal handler, and twice)."""
        if not self._stopping.is_set():
            log.info("stop requested: draining %d in-flight record(s)", len(self._tasks))
            self._stopping.set()

    async def run(self) -> None:
        """Consume until a stop is requested, then drain, commit and leave the group."""
        opts = self._conn.client_options()
        self._producer = AIOKafkaProducer(
            **opts,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            client_id=self._config.client_id,
            max_request_size=MAX_REQUEST_SIZE,  # topics' own limits apply (fit)
        )
        self._consumer = AIOKafkaConsumer(
            **opts,
            group_id=self._config.group_id,
            client_id=self._config.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._config.session_timeout_ms,
            heartbeat_interval_ms=max(300, self._config.session_timeout_ms // 4),
            max_poll_interval_ms=max(300_000, int(self._config.drain_seconds * 2000)),
        )
        await self._processor.start()
        await self._producer.start()
        await self._limits.start()
        try:
            await self._consumer.start()
            self._consumer.subscribe(self._config.topics, listener=_Rebalance(self))
            self.stats.started_at = time.monotonic()
            await self._consume()
            await self._drain()
        finally:
            # each step bounded: a client that hangs on close (the consumer leaving its
            # group mid-rebalance, say) must not keep a stopping worker past its grace
            # period; what overran is named in the log
            ends = time.monotonic() + CLOSE_SECONDS
            await _closed("the consumer", self._consumer.stop(), ends)
            await _closed("the topic limits", self._limits.stop(), ends)
            await _closed("the producer", self._producer.stop(), ends)
            await _closed(f"the {self._processor.name} processor", self._processor.stop(), ends)
            log.info("worker stopped: %s", self.stats)

    async def _consume(self) -> None:
        last_commit = last_poll = time.monotonic()
        while not self._stopping.is_set():
            room = self._config.concurrency - len(self._tasks)
            if room <= 0:
                if time.monotonic() - last_poll >= KEEPALIVE_POLL_SECONDS:
                    # Every slot has been taken for a while (parked behind a rate limit, say):
                    # poll with the partitions paused, so the group does not think this
                    # member dead (max_poll_interval) and nothing more is fetched.
                    self._pause(True)
                    await self._consumer.getmany(timeout_ms=0, max_records=1)
                    last_poll = time.monotonic()
                await self._slot_freed(POLL_SECONDS)
            else:
                self._pause(False)
                batches = await self._consumer.getmany(
                    timeout_ms=int(POLL_SECONDS * 1000), max_records=room
                )
                last_poll = time.monotonic()
                self._start(batches)
            if time.monotonic() - last_commit >= self._config.commit_interval:
                self._commit_in_background()
                last_commit = time.monotonic()

    def _start(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Start a task for each fetched record (there is a free slot for each)."""
        for tp, records in batches.items():
            epoch = self._tracker.epoch(tp)
            for raw in records:
                if self._stopping.is_set() or epoch is None:
                    break  # not started: uncommitted, so fetched again by the next owner
                if self._tracker.started(tp, raw.offset) is None:
                    continue
                task = asyncio.create_task(self._run_one(tp, InRecord.of(raw), epoch))
                self._tasks[task] = tp
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._free.set()

    async def _slot_freed(self, within: float) -> None:
        """Wait until a record finishes (or ``within`` seconds pass)."""
        self._free.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._free.wait(), within)

    def _pause(self, full: bool) -> None:
        """Pause the partitions for a keep-alive poll while every slot is taken; resume once
        one is free. (Pausing drops what the client prefetched: not on every full moment.)"""
        if full == self._paused:
            return
        assignment = list(self._consumer.assignment())
        if full:
            self._consumer.pause(*assignment)
        else:
            self._consumer.resume(*assignment)
        self._paused = full

    async def _run_one(self, tp: TopicPartition, record: InRecord, epoch: int) -> None:
        started = time.monotonic()
        try:
            outcomes = await self._processor.handle(record)
        except Exception as exc:  # a processor bug must not kill the worker
            log.exception("processor %s failed on %s", self._processor.name, record.position)
            outcomes = [self._processor.dead_letter(record, exc)]
        try:
            await self._publish(record, outcomes)
        except Exception:
            # A bug on the publishing path: this record can never finish here, and its
            # partition would stop committing behind it. Stop (exit 1) rather than stall:
            # the record is redelivered to whoever owns the partition next.
            log.exception("cannot publish the outcome of %s; stopping", record.position)
            self.failed = True
            self.request_stop()
            return
        self._tracker.finished(tp, record.offset, epoch)
        self.stats.processed += 1
        self.stats.dead_letters += sum(o.dead_letter for o in outcomes)
        self.metrics.finished(time.monotonic() - started, [o.code for o in outcomes])

    async def _fit(self, record: InRecord, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """The outcomes, each fitted to its topic's ``max.message.bytes`` (see ``fit``): a
        dead letter is shrunk; any other outcome that would not fit turns the whole result
        into the record's dead letter."""
        fitted = []
        for outcome in outcomes:
            size, limit = size_of(outcome), await self._limits.limit(outcome.topic)
            if size <= limit:
                fitted.append(outcome)
            elif outcome.dead_letter:
                fitted.append(shrink(outcome))
            else:
                error = OutcomeTooLarge(
                    f"the result is {size:,} bytes, over the "
                    f"max.message.bytes of {outcome.topic} ({limit:,})"
                )
                return await self._fit(record, [self._processor.dead_letter(record, error)])
        return fitted

    async def _publish(self, record: InRecord, outcomes: Sequence[Outcome]) -> None:
        """Publish until the broker acknowledges every outcome (or the worker stops)."""
        delay = 0.1
        outcomes = await self._fit(record, outcomes)
        while True:
            try:
                futures = [
                    await self._producer.send(o.topic, o.value, key=o.key, headers=list(o.headers))
                    for o in outcomes
                ]
                await asyncio.gather(*futures)
                return
            except MessageSizeTooLargeError as exc:  # the limit was lowered since it was read
                log.warning(
                    "%s: an outcome is over its topic's limit (%s); refitting", record.position, exc
                )
                for outcome in outcomes:
                    self._limits.forget(outcome.topic)
                outcomes = await self._fit(record, outcomes)
                continue
            except KafkaError as exc:
                # aiokafka's KafkaTimeoutError (no broker took the record in time, e.g. while
                # leaders move) carries no retriable flag, but trying again is what helps
                retriable = getattr(exc, "retriable", False) or isinstance(exc, KafkaTimeoutError)
                if not retriable and len(outcomes) and not any(o.dead_letter for o in outcomes):
                    log.error("cannot publish outcome of %s: %s", record.position, exc)
                    outcomes = await self._fit(record, [self._processor.dead_letter(record, exc)])
                    continue
                if self._stopping.is_set():
                    raise
                log.warning(
                    "publish of %s failed (%s); retrying in %.1fs", record.position, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _commit_in_background(self) -> None:
        """Commit without holding up the loop: while the group coordinator moves (its broker
        died), a commit waits for the new one, and fetching, pausing and seeing a stop
        request must go on meanwhile. One commit at a time."""
        if self._committing is None or self._committing.done():
            self._committing = asyncio.create_task(self._commit(), name="commit")

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = {}
        for tp in self._tracker.partitions():
            if only is not None and tp not in only:
                continue
            offset = self._tracker.committable(tp)
            if offset is not None and offset > self._committed.get(tp, -1):
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("commit failed (%s); will retry", exc)
            return
        for tp, offset in offsets.items():
            self._committed[tp] = max(offset, self._committed.get(tp, -1))
        self.stats.commits += 1
        self.metrics.commits.inc(processor=self._processor.name)

    async def _wait_tasks(self, tps: set[TopicPartition] | None, grace: float) -> None:
        tasks = [t for t, tp in self._tasks.items() if tps is None or tp in tps]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if pending:
            log.warning(
                "%d record(s) still in flight after %.1fs; giving them up uncommitted",
                len(pending),
                grace,
            )

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._assigned = False
        # The broker drops a member that stays in this callback past its session timeout,
        # and the group then rebalances again and again: wait at most half of it, then give
        # the unfinished records up (uncommitted, the next owner processes them).
        grace = min(self._config.drain_seconds, self._config.session_timeout_ms / 2000)
        await self._wait_tasks(revoked, grace)
        await self._cancel_tasks(revoked)
        await self._commit(only=revoked)
        for tp in revoked:
            self._tracker.forget(tp)
            self._committed.pop(tp, None)
        log.info("partitions revoked: %s", sorted(str(tp) for tp in revoked))

    async def _cancel_tasks(self, tps: set[TopicPartition] | None) -> None:
        tasks = [t for t, tp in self._tasks.items() if tps is None or tp in tps]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _lag(self) -> dict[tuple[str, int], int]:
        """Per assigned partition: the log end the consumer last saw, minus the offset up to
        which every record is done (what the next commit will say)."""
        lags: dict[tuple[str, int], int] = {}
        if self._consumer is None:
            return lags
        for tp in self._tracker.partitions():
            end = self._consumer.highwater(tp)
            done = self._tracker.committable(tp)
            if done is None:
                done = self._committed.get(tp)
            if end is not None and done is not None:
                lags[(tp.topic, tp.partition)] = max(0, end - done)
        return lags

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        self._assigned = True
        if self._paused:  # newly assigned partitions start paused like the rest
            self._consumer.pause(*assigned)
        for tp in assigned:
            self._tracker.assign(tp)
        log.info("partitions assigned: %s", sorted(str(tp) for tp in assigned))

    async def _drain(self) -> None:
        await self._wait_tasks(None, self._config.drain_seconds)
        await self._cancel_tasks(None)
        if self._committing is not None:
            await asyncio.wait([self._committing], timeout=FINAL_COMMIT_SECONDS)
        try:
            await asyncio.wait_for(self._commit(), FINAL_COMMIT_SECONDS)
        except TimeoutError:
            log.warning("the final commit did not finish in %.0f s; leaving", FINAL_COMMIT_SECONDS)


async def _closed(what: str, closing: Awaitable[object], ends: float) -> None:
    """Await ``closing`` until ``ends`` (monotonic), at least a second; an error or an
    overrun is logged, never raised: the worker is stopping either way."""
    try:
        await asyncio.wait_for(closing, max(1.0, ends - time.monotonic()))
    except TimeoutError:
        log.warning("closing %s did not finish in time; left behind", what)
    except Exception as exc:
        log.warning("closing %s failed: %s", what, exc)
