"""The templates topic, materialised: every version and label, and resolution.

Both sides need it: workers render the version a job names, and producers pin labels to
versions at submit time and pick the next version number at push. The compacted topic
holds immutable versions keyed ``version:<name>:<n>`` and labels keyed
``label:<name>:<label>`` (see :mod:`schemas.templates`), the model catalog's
revisions keyed ``catalog:models:<n>``, and each template's online checks keyed
``checks:<name>`` (:mod:`schemas.evals`).

:class:`TemplateStore` is fed records in topic order and answers
``resolve("summarize@production")``. Anything on the topic that is not a valid record --
a key that is not UTF-8, an unknown kind, a value that does not validate, a record whose
key disagrees with its value or whose content hash is wrong -- is skipped with one log
line and counted (``skipped``): one bad record never stops a worker from starting, nor
drops the records after it.

:class:`TemplateRegistry` reads the topic from the beginning to its end on ``start`` and,
with ``follow``, keeps reading in the background, so new versions and moved labels take
effect within a poll interval. It reads committed records only: pushes are transactions
(:mod:`producers.templates`), and a push that lost a race was aborted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from pydantic import ValidationError

from schemas import (
    CatalogRevision,
    ErrorCode,
    LabelRecord,
    PromptmillError,
    Template,
    TemplateRef,
    decode,
)
from schemas.catalog import Catalog, parse_catalog
from schemas.evals import OnlineChecks
from schemas.yaml_files import YamlFileError
from topics.connection import KafkaConnection
from topics.partitions import read_to_end, topic_partitions
from topics.tasks import cancel

log = logging.getLogger(__name__)
R = TypeVar("R", Template, LabelRecord, CatalogRevision, OnlineChecks)


class UnknownTemplate(PromptmillError):
    code = ErrorCode.UNKNOWN_TEMPLATE


class TemplateStore:
    """Every known template version and label."""

    def __init__(self) -> None:
        self._versions: dict[str, dict[int, Template]] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._catalogs: dict[int, tuple[CatalogRevision, Catalog]] = {}
        self._canaries: dict[str, dict[str, tuple[int, float]]] = {}
        self._checks: dict[str, OnlineChecks] = {}
        self.skipped = 0  # records that were not valid templates-topic records

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one record of the templates topic (a ``None`` value is a tombstone);
        whether it was applied. Never raises: a bad record is logged and skipped."""
        try:
            text = (key or b"").decode("utf-8")
        except UnicodeDecodeError:
            return self._skip(key, "the key is not UTF-8")
        kind, _, rest = text.partition(":")
        name, _, selector = rest.partition(":")
        if kind == "catalog" and name == "models" and selector.isdigit():
            return self._apply_catalog(key, text, int(selector), value)
        if kind == "checks" and name and not selector:
            return self._apply_checks(key, text, name, value)
        if kind not in ("label", "version") or not name or not selector:
            return self._skip(
                key,
                "the key is not version:<name>:<n>, label:<name>:<label>, checks:<name> or "
                "catalog:models:<n>",
            )
        if value is None:
            if kind == "label":
                self._labels.get(name, {}).pop(selector, None)
                self._canaries.get(name, {}).pop(selector, None)
            elif selector.isdigit():
                self._versions.get(name, {}).pop(int(selector), None)
            return True
        record: Template | LabelRecord | None = (
            self._decoded(key, text, value, LabelRecord)
            if kind == "label"
            else self._decoded(key, text, value, Template)
        )
        if record is None:
            return False
        if isinstance(record, LabelRecord):
            self._labels.setdefault(record.name, {})[record.label] = record.version
            canaries = self._canaries.setdefault(record.name, {})
            if record.canary_version is not None and record.canary_percent is not None:
                canaries[record.label] = (record.canary_version, record.canary_percent)
            else:
                canaries.pop(record.label, None)
            return True
        if record.compute_hash() != record.content_hash:
            return self._skip(key, "content_hash does not match the content")
        self._versions.setdefault(record.name, {})[record.version] = record
        return True

    def _apply_catalog(
        self, key: bytes | None, text: str, revision: int, value: bytes | None
    ) -> bool:
        if value is None:
            self._catalogs.pop(revision, None)
            return True
        record = self._decoded(key, text, value, CatalogRevision)
        if record is None:
            return False
        if CatalogRevision.hash_of(record.source) != record.content_hash:
            return self._skip(key, "content_hash does not match the catalog")
        try:
            catalog = parse_catalog(record.source, f"{record.origin} (revision {revision})")
        except YamlFileError as exc:
            return self._skip(key, str(exc))
        self._catalogs[revision] = (record, catalog)
        return True

    def _apply_checks(self, key: bytes | None, text: str, name: str, value: bytes | None) -> bool:
        if value is None:
            self._checks.pop(name, None)
            return True
        record = self._decoded(key, text, value, OnlineChecks)
        if record is None:
            return False
        if OnlineChecks.hash_of(record.assertions, record.threshold) != record.content_hash:
            return self._skip(key, "content_hash does not match the checks")
        self._checks[name] = record
        return True

    def _decoded(self, key: bytes | None, text: str, value: bytes, model: type[R]) -> R | None:
        """The record a value holds, if it validates and says the same key (else skipped)."""
        try:
            record = decode(value, model)
        except ValidationError as exc:
            self._skip(key, str(exc.errors()[0]["msg"]))
            return None
        if record.key != text:
            self._skip(key, f"the value is {record.key}, not what the key says")
            return None
        return record

    def checks(self, name: str) -> OnlineChecks | None:
        """The online checks of template ``name`` (None if none were pushed, or the last
        push had none)."""
        found = self._checks.get(name)
        return found if found is not None and found.assertions else None

    def checks_hash(self, name: str) -> str | None:
        """The content hash of the newest checks record of ``name`` (empty ones too)."""
        found = self._checks.get(name)
        return found.content_hash if found is not None else None

    def catalog(self, revision: int | None = None) -> tuple[CatalogRevision, Catalog] | None:
        """The model catalog's newest revision (or ``revision``), parsed; None if the topic
        has none (or not that one)."""
        if revision is None:
            revision = max(self._catalogs, default=0)
        return self._catalogs.get(revision)

    def _skip(self, key: bytes | None, reason: str) -> bool:
        self.skipped += 1
        log.warning("ignoring bad templates record (key %.80r): %s", key, reason)
        return False

    def resolve(self, ref: TemplateRef | str, draw: float | None = None) -> Template:
        """The version ``ref`` names; raises :class:`UnknownTemplate` naming what is missing.
        A label with a canary gives its canary version when ``draw`` (a job's
        :func:`~schemas.templates.canary_draw`) is below the canary's percent."""
        if isinstance(ref, str):
            ref = TemplateRef.parse(ref)
        versions = self._versions.get(ref.name)
        if not versions:
            raise UnknownTemplate(f"unknown template {ref.name!r}")
        version = ref.version
        if version is None:
            labels = self._labels.get(ref.name, {})
            if ref.label not in labels:
                known = ", ".join(sorted(labels)) or "none"
                raise UnknownTemplate(
                    f"template {ref.name!r} has no label {ref.label!r} (labels: {known}; "
                    f"versions: {', '.join(map(str, sorted(versions)))})"
                )
            version = labels[ref.label or ""]
            canary = self.canary(ref.name, ref.label or "")
            if canary is not None and draw is not None and draw < canary[1]:
                version = canary[0]
        if version not in versions:
            raise UnknownTemplate(f"template {ref.name!r} has no version {version}")
        return versions[version]

    def names(self) -> list[str]:
        return sorted(self._versions)

    def versions(self, name: str) -> list[Template]:
        return [v for _, v in sorted(self._versions.get(name, {}).items())]

    def labels(self, name: str) -> dict[str, int]:
        return dict(sorted(self._labels.get(name, {}).items()))

    def canary(self, name: str, label: str) -> tuple[int, float] | None:
        """A label's canary: (version, percent of the jobs), if it has one."""
        return self._canaries.get(name, {}).get(label)

    def latest(self, name: str) -> Template | None:
        versions = self._versions.get(name)
        return versions[max(versions)] if versions else None


class TemplateRegistry:
    """A :class:`TemplateStore` kept up to date from Kafka (no consumer group: every
    reader holds the whole view)."""

    def __init__(self, conn: KafkaConnection, topic: str, *, follow: bool = True) -> None:
        self.store = TemplateStore()
        self._conn = conn
        self._topic = topic
        self._follow = follow
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> TemplateRegistry:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Catch up with the topic; with ``follow`` keep reading in the background."""
        if self._consumer is not None:
            return
        self._consumer = AIOKafkaConsumer(
            **self._conn.client_options(),
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed",
        )
        await self._consumer.start()
        try:
            tps = await topic_partitions(self._consumer, self._topic)
            self._consumer.assign(tps)
            await self._consumer.seek_to_beginning(*tps)
            async for record in read_to_end(self._consumer, tps):  # to the last stable offsets
                self.store.apply(record.key, record.value)
        except BaseException:
            await self._consumer.stop()
            self._consumer = None
            raise
        if self._follow:
            self._task = asyncio.create_task(self._run(), name="template-registry")
        else:
            await self._consumer.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def _poll(self, timeout_ms: int) -> None:
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=1000)
        for records in batches.values():
            for record in records:
                self.store.apply(record.key, record.value)

    async def _run(self) -> None:
        while True:
            try:
                await self._poll(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the last good view; Kafka may come back
                log.exception("template registry poll failed; retrying")
                await asyncio.sleep(1.0)
