"""The Python API: submit a batch, follow it, collect its results.

    async with Client(conn, catalog) as client:
        manifest = await client.submit(Path("jobs.jsonl"))
        async for record in client.follow(manifest.batch_id):
            ...

``submit`` publishes with an idempotent producer (``acks=all``), resolves template
labels to versions once per batch, turns invalid lines into failure records so the
batch's totals add up, and ends with the batch manifest.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from producers.reader import InputFormat, LineError, detect_format, read_jobs
from producers.results import BatchReport, ResultFollower
from schemas import (
    BatchManifest,
    Completion,
    ErrorCode,
    Failure,
    PromptJob,
    PromptmillError,
    SourcePosition,
    encode,
)
from schemas.headers import job_headers
from schemas.jobs import line_job_id
from schemas.templates import canary_draw
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.batch_index import BatchIndex
from topics.limits import RECORD_OVERHEAD, TopicLimits
from topics.templates import TemplateRegistry, TemplateStore, UnknownTemplate

__all__ = ["BatchReport", "Client", "SubmitReport"]
PENDING_LIMIT = 5000
MAX_REQUEST_SIZE = 64 * 1024 * 1024  # the client-side cap; the jobs topic's limit applies
HEADROOM = 1024  # for the key and headers of a job record
Progress = Callable[[int], None]


@dataclass
class SubmitReport:
    manifest: BatchManifest
    errors: list[LineError] = field(default_factory=list)


def new_batch_id() -> str:
    return f"b-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


class Client:
    """A producer-side session against one cluster and topic catalog."""

    def __init__(
        self,
        conn: KafkaConnection,
        catalog: TopicCatalog,
        *,
        index: BatchIndex | None = None,
        max_job_bytes: int = 1_000_000,
    ) -> None:
        self._conn = conn
        self._catalog = catalog
        # without Redis, batch ids are looked up in their partition of the batches topic
        self.index = index or BatchIndex(None, "", conn, catalog)
        self._max_job_bytes = max_job_bytes
        self._job_limit: int | None = None
        self._producer: Any = None

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._producer is None:
            self._producer = AIOKafkaProducer(
                **self._conn.client_options(),
                acks="all",
                enable_idempotence=True,
                linger_ms=10,
                max_request_size=MAX_REQUEST_SIZE,  # the jobs topic's own limit is checked
            )
            await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def submit(
        self,
        path: Path,
        *,
        batch_id: str | None = None,
        tenant: str = "default",
        template: str | None = None,
        fmt: InputFormat = InputFormat.AUTO,
        rerun: bool = False,
        on_progress: Progress | None = None,
        pin_models: bool = False,
    ) -> SubmitReport:
        """Submit every line of ``path`` as one batch. A batch id that is taken raises
        :class:`~topics.batch_index.BatchExists`, unless ``rerun`` (a fresh run of it).
        ``pin_models``: its jobs route by the model catalog's newest revision now, whatever
        is pushed while they run."""
        batch_id = batch_id or new_batch_id()
        if fmt is InputFormat.AUTO:
            fmt = detect_format(path)
        run = await self.index.claim(batch_id, rerun=rerun)
        items = read_jobs(
            path,
            batch_id=batch_id,
            tenant=tenant,
            fmt=fmt,
            template=template,
            max_line_bytes=await self.job_limit(),
            run=run,
        )
        return await self.submit_items(
            items,
            batch_id=batch_id,
            run=run,
            tenant=tenant,
            # a file name that is not UTF-8 (bytes kept as surrogates) must still encode
            source=str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
            input_format=fmt,
            on_progress=on_progress,
            pin_models=pin_models,
        )

    async def submit_items(
        self,
        items: Iterable[PromptJob | LineError] | AsyncIterable[PromptJob | LineError],
        *,
        batch_id: str,
        run: int | None = None,
        tenant: str = "default",
        source: str | None = None,
        input_format: InputFormat = InputFormat.PROMPTMILL,
        on_progress: Progress | None = None,
        pin_models: bool = False,
    ) -> SubmitReport:
        """Submit already-parsed jobs (and line errors) as run ``run`` of batch
        ``batch_id`` (``None``: claim the id as a new batch; the jobs must carry the run)."""
        if self._producer is None:
            raise RuntimeError("Client.submit called before start()")
        if run is None:
            run = await self.index.claim(batch_id, rerun=False)
        started = datetime.now(UTC)
        topic = self._catalog.name(TopicKind.TEMPLATES)
        async with TemplateRegistry(self._conn, topic, follow=False) as registry:
            store = registry.store
        pinned = _catalog_revision(store) if pin_models else None
        report = SubmitReport(
            BatchManifest(
                batch_id=batch_id,
                run=run,
                tenant=tenant,
                source=source,
                input_format="openai-batch"
                if input_format is InputFormat.OPENAI_BATCH
                else "promptmill",
                total=0,
                submitted=0,
                invalid=0,
                started_at=started,
                submitted_at=started,
                catalog_revision=pinned,
            )
        )
        pending: list[Any] = []
        manifest = report.manifest
        limit = await self.job_limit()
        async for item in _each(items):
            value = b""
            if isinstance(item, PromptJob):
                _pin_template(item, store, manifest.templates)
                if item.catalog_revision is None:
                    item.catalog_revision = pinned
                value = encode(item)
            if isinstance(item, PromptJob) and len(value) > limit:
                item = LineError.of(
                    item.source_line or 0,
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"the job is {len(value):,} bytes, over the job size limit of {limit:,}",
                    value,
                    item.custom_id,
                )
            if isinstance(item, LineError):
                manifest.invalid += 1
                report.errors.append(item)
                pending.append(await self._send_line_error(item, batch_id, run, tenant, source))
            else:
                pending.append(
                    await self._send(TopicKind.JOBS, item.job_id, value, batch_id, item.tenant, run)
                )
                manifest.submitted += 1
            manifest.total += 1
            if len(pending) >= PENDING_LIMIT:
                await _acked(pending)
            if on_progress is not None:
                on_progress(manifest.total)
        await _acked(pending)
        manifest.submitted_at = datetime.now(UTC)
        await _acked(
            [await self._send(TopicKind.BATCHES, batch_id, encode(manifest), batch_id, tenant, run)]
        )
        await self.index.record(manifest)
        return report

    async def job_limit(self) -> int:
        """The largest job record this client publishes: ``max_job_bytes``, or less if the
        jobs topic's ``max.message.bytes`` is lower (read from the broker once)."""
        if self._job_limit is None:
            async with TopicLimits(self._conn) as limits:
                topic = await limits.limit(self._catalog.name(TopicKind.JOBS))
            self._job_limit = min(self._max_job_bytes, topic - RECORD_OVERHEAD - HEADROOM)
        return self._job_limit

    def follow(self, batch_id: str) -> ResultFollower:
        """A follower for the batch's terminal records (see :class:`ResultFollower`)."""
        return ResultFollower(self._conn, self._catalog, batch_id)

    async def results(
        self, batch_id: str, *, follow: bool = False
    ) -> AsyncIterator[Completion | Failure]:
        """Every terminal record of the batch, once each."""
        async for record in self.follow(batch_id).records(follow=follow):
            yield record

    async def _send(
        self, kind: TopicKind, key: str, value: bytes, batch_id: str, tenant: str, run: int
    ) -> Any:
        headers = job_headers(batch_id, key, tenant, run)
        return await self._producer.send(
            self._catalog.name(kind), value, key=key.encode(), headers=headers
        )

    async def _send_line_error(
        self, error: LineError, batch_id: str, run: int, tenant: str, source: str | None
    ) -> Any:
        job_id = line_job_id(batch_id, run, error.line)
        failure = Failure(
            job_id=job_id,
            batch_id=batch_id,
            run=run,
            tenant=tenant,
            custom_id=error.custom_id,
            code=error.code,
            message=f"line {error.line}: {error.message}",
            payload=error.raw,
            payload_bytes=error.size,
            payload_sha256=error.sha256 or None,
            source=SourcePosition(file=source, line=error.line),
        )
        return await self._send(TopicKind.FAILURES, job_id, encode(failure), batch_id, tenant, run)


def _pin_template(job: PromptJob, store: TemplateStore, used: dict[str, int]) -> None:
    """Resolve a label to a version once per batch, so a label moved mid-batch never mixes
    (a label with a canary: the canary version for the canary's share of the jobs, drawn
    from each job's run-independent id, so a rerun of the batch draws the same)."""
    ref = job.template_ref()
    if ref is None or job.template_version is not None:
        return
    try:
        job.template_version = store.resolve(ref, canary_draw(job.canary_key())).version
    except UnknownTemplate:
        return  # the worker dead-letters it with the reason
    key = str(TemplateRefKey(ref.name, ref.label))
    canary = store.canary(ref.name, ref.label) if ref.label else None
    if canary is not None and job.template_version == canary[0]:
        key += " (canary)"
    used[key] = job.template_version


def _catalog_revision(store: TemplateStore) -> int:
    """The model catalog's newest revision, for a batch that pins it."""
    newest = store.catalog()
    if newest is None:
        raise PromptmillError(
            "--pin-models: the templates topic holds no model catalog revision "
            "(publish one with `promptmill models push FILE`)"
        )
    return newest[0].revision


@dataclass(frozen=True)
class TemplateRefKey:
    name: str
    label: str | None

    def __str__(self) -> str:
        return f"{self.name}@{self.label}"


async def _each(
    items: Iterable[PromptJob | LineError] | AsyncIterable[PromptJob | LineError],
) -> AsyncIterator[PromptJob | LineError]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _acked(pending: list[Any]) -> None:
    for future in pending:
        await future
    pending.clear()
