"""The one worker runtime every processor runs on.

A :class:`Worker` consumes its topics in a consumer group (aiokafka), hands each record
to its :class:`Processor` with at most ``concurrency`` records in flight, publishes the
processor's outcome records with an idempotent producer, and commits each partition only
up to the first record whose outcome the broker has not acknowledged yet (see
:mod:`processors.runtime.offsets`). A processor error never kills the worker: it becomes
a dead-letter outcome. On stop it drains: no more fetching, in-flight records get a grace
period, the final offsets are committed and the group is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from processors.runtime.metrics import Registry
from processors.runtime.observe import RuntimeMetrics
from processors.runtime.offsets import OffsetTracker
from processors.runtime.records import InRecord, Outcome
from topics import KafkaConnection

log = logging.getLogger(__name__)


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
        self._slots = asyncio.Semaphore(config.concurrency)
        self._stopping = asyncio.Event()
        self._consumer: Any = None
        self._producer: Any = None
        self.stats = WorkerStats()
        self.metrics = RuntimeMetrics(registry, processor.name, lambda: len(self._tasks), self._lag)
        self.ready = False

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
        try:
            await self._consumer.start()
            self._consumer.subscribe(self._config.topics, listener=_Rebalance(self))
            self.stats.started_at = time.monotonic()
            await self._consume()
            await self._drain()
        finally:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            await self._producer.stop()
            await self._processor.stop()
            log.info("worker stopped: %s", self.stats)

    async def _consume(self) -> None:
        last_commit = time.monotonic()
        while not self._stopping.is_set():
            batches = await self._consumer.getmany(
                timeout_ms=100, max_records=self._config.concurrency
            )
            epochs = {tp: self._tracker.epoch(tp) for tp in batches}
            for tp, records in batches.items():
                for raw in records:
                    await self._slots.acquire()
                    epoch = self._tracker.epoch(tp)
                    if self._stopping.is_set() or epoch is None or epoch != epochs[tp]:
                        self._slots.release()  # revoked or reassigned: it will be refetched
                        break
                    if self._tracker.started(tp, raw.offset) is None:
                        self._slots.release()
                        continue
                    task = asyncio.create_task(self._run_one(tp, InRecord.of(raw), epoch))
                    self._tasks[task] = tp
                    task.add_done_callback(self._tasks.pop)
            if time.monotonic() - last_commit >= self._config.commit_interval:
                await self._commit()
                last_commit = time.monotonic()

    async def _run_one(self, tp: TopicPartition, record: InRecord, epoch: int) -> None:
        started = time.monotonic()
        try:
            try:
                outcomes = await self._processor.handle(record)
            except Exception as exc:  # a processor bug must not kill the worker
                log.exception("processor %s failed on %s", self._processor.name, record.position)
                outcomes = [self._processor.dead_letter(record, exc)]
            await self._publish(record, outcomes)
            self._tracker.finished(tp, record.offset, epoch)
            self.stats.processed += 1
            self.stats.dead_letters += sum(o.dead_letter for o in outcomes)
            self.metrics.finished(time.monotonic() - started, [o.code for o in outcomes])
        finally:
            self._slots.release()

    async def _publish(self, record: InRecord, outcomes: Sequence[Outcome]) -> None:
        """Publish until the broker acknowledges every outcome (or the worker stops)."""
        delay = 0.1
        while True:
            try:
                futures = [
                    await self._producer.send(o.topic, o.value, key=o.key, headers=list(o.headers))
                    for o in outcomes
                ]
                await asyncio.gather(*futures)
                return
            except KafkaError as exc:
                if (
                    not getattr(exc, "retriable", False)
                    and len(outcomes)
                    and not any(o.dead_letter for o in outcomes)
                ):
                    log.error("cannot publish outcome of %s: %s", record.position, exc)
                    outcomes = [self._processor.dead_letter(record, exc)]
                    continue
                if self._stopping.is_set():
                    raise
                log.warning(
                    "publish of %s failed (%s); retrying in %.1fs", record.position, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

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
        self._committed.update(offsets)
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
        self.ready = True
        for tp in assigned:
            self._tracker.assign(tp)
        log.info("partitions assigned: %s", sorted(str(tp) for tp in assigned))

    async def _drain(self) -> None:
        await self._wait_tasks(None, self._config.drain_seconds)
        await self._cancel_tasks(None)
        await self._commit()
