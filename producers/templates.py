"""Template files and ``templates push``.

A template file is YAML: ``name``, ``description``, ``model``, ``params``, ``variables``
(required ones) and ``messages`` (Jinja in ``content``). Pushing publishes a new
immutable version only when the content changed, then moves the requested label.
Errors name the file, the line and the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import IllegalOperation, KafkaError, ProducerFenced
from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from schemas import CatalogRevision, LabelRecord, Template, encode
from schemas.audit import Actor, AuditAction, AuditEvent
from schemas.catalog import parse_catalog
from schemas.evals import OnlineChecks
from schemas.prompt_tests import TESTS_SUFFIX, LoadedTests, find_test_files, load_test_file
from schemas.templates import TemplateBody
from schemas.yaml_files import YamlFileError, line_of, load_yaml, validate_yaml
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.catalog import TransactionalId
from topics.templates import TemplateRegistry, TemplateStore

log = logging.getLogger(__name__)
PUSH_ATTEMPTS = 8


TemplateFileError = YamlFileError  # a template file that cannot be loaded


@dataclass(frozen=True)
class TemplateFile:
    path: Path
    body: TemplateBody
    tests: LoadedTests | None = None  # its NAME.tests.yaml, whose online checks are pushed


def load_template_dir(directory: Path) -> list[TemplateFile]:
    """Every ``*.yaml``/``*.yml`` template below ``directory``, validated, each with its test
    file (``NAME.tests.yaml`` anywhere below ``directory``; validated too), if any."""
    if not directory.is_dir():
        raise TemplateFileError(f"{directory}: not a directory")
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.suffix in {".yaml", ".yml"} and not p.name.endswith(TESTS_SUFFIX)
    )
    if not files:
        raise TemplateFileError(f"{directory}: no *.yaml template files")
    loaded = [load_template_file(p) for p in files]
    seen: dict[str, Path] = {}
    for item in loaded:
        if item.body.name in seen:
            raise TemplateFileError(
                f"{item.path}: template name {item.body.name!r} also used by {seen[item.body.name]}"
            )
        seen[item.body.name] = item.path
    tests = {t.template: t for t in map(load_test_file, find_test_files(directory))}
    return [replace(item, tests=tests.get(item.body.name)) for item in loaded]


def load_template_file(path: Path) -> TemplateFile:
    node, data = load_yaml(path, "a template file")
    body = validate_yaml(path, node, data, TemplateBody)
    syntax = SandboxedEnvironment()
    for index, message in enumerate(body.messages):
        try:
            syntax.parse(message.content)
        except TemplateError as exc:
            where = line_of(node, ["messages", index, "content"])
            raise TemplateFileError(
                f"{path}:{where}: field messages.{index}.content: Jinja syntax error: {exc}"
            ) from None
    return TemplateFile(path, body)


async def push_templates(
    conn: KafkaConnection,
    catalog: TopicCatalog,
    files: list[TemplateFile],
    label: str | None,
    actor: Actor,
) -> list[str]:
    """Publish changed templates as new versions and move ``label``; returns what was done.

    A version number means one content fleet-wide, however many pushes race: see
    :func:`_transaction`.
    """

    def plan(store: TemplateStore) -> tuple[list[Record], list[str]]:
        records: list[Record] = []
        actions = []
        for item in files:
            body, name = item.body, item.body.name
            digest = body.compute_hash()
            latest = store.latest(name)
            if latest is not None and latest.content_hash == digest:
                version = latest.version
                actions.append(f"{name}: unchanged (version {version})")
            else:
                version = latest.version + 1 if latest else 1
                records.append(Template(**body.model_dump(), version=version, content_hash=digest))
                actions.append(f"{name}: published version {version}")
            if label is not None and store.labels(name).get(label) != version:
                records.append(LabelRecord(name=name, label=label, version=version))
                actions.append(f"{name}: label {label} -> version {version}")
            checks = _online_checks(item)
            if checks is not None and store.checks_hash(name) != checks.content_hash:
                records.append(checks)
                actions.append(f"{name}: online checks -> {len(checks.assertions)} assertion(s)")
        return records, actions

    return await _transaction(conn, catalog, plan, actor)


async def move_label(
    conn: KafkaConnection,
    catalog: TopicCatalog,
    name: str,
    label: str,
    version: int,
    actor: Actor,
    canary: tuple[int, float] | None = None,
) -> None:
    """Point ``name@label`` at an existing ``version`` (a rollback is just this), with a
    ``canary`` (version, percent of the jobs) if given."""

    def plan(store: TemplateStore) -> tuple[list[Record], list[str]]:
        store.resolve(f"{name}@{version}")  # raises UnknownTemplate naming what is missing
        if canary is not None:
            store.resolve(f"{name}@{canary[0]}")
        record = LabelRecord(
            name=name,
            label=label,
            version=version,
            canary_version=canary[0] if canary else None,
            canary_percent=canary[1] if canary else None,
        )
        return [record], []

    await _transaction(conn, catalog, plan, actor)


async def end_canary(
    conn: KafkaConnection, catalog: TopicCatalog, name: str, label: str, promote: bool, actor: Actor
) -> int:
    """Finish a label's canary: ``promote`` moves the label to the canary's version, else
    (a rollback) the label stays and the canary stops; the version the label is left on."""
    kept: list[int] = []

    def plan(store: TemplateStore) -> tuple[list[Record], list[str]]:
        canary = store.canary(name, label)
        if canary is None:
            raise TemplateFileError(f"{name}@{label} has no canary to promote or roll back")
        version = canary[0] if promote else store.labels(name)[label]
        kept[:] = [version]
        return [LabelRecord(name=name, label=label, version=version)], []

    await _transaction(conn, catalog, plan, actor)
    return kept[0]


def _online_checks(item: TemplateFile) -> OnlineChecks | None:
    """The online checks of a template's test file (none without one); an empty list,
    when the file marks none, turns earlier ones off."""
    if item.tests is None:
        return None
    assertions, threshold = item.tests.online(), item.tests.threshold
    return OnlineChecks(
        name=item.body.name,
        assertions=assertions,
        threshold=threshold,
        origin=str(item.tests.path),
        content_hash=OnlineChecks.hash_of(assertions, threshold),
    )


def read_catalog_file(path: Path) -> str:
    """A model catalog file's text, validated: errors name file, line and field."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read a model catalog: {exc.strerror}") from None
    parse_catalog(source, str(path))
    return source


async def push_catalog(
    conn: KafkaConnection, catalog: TopicCatalog, source: str, origin: str, actor: Actor
) -> list[str]:
    """Publish a model catalog (``source``, from file ``origin``, see
    :func:`read_catalog_file`) as its next revision, unless the newest one has the same
    text; every worker switches to it within a poll of the topic."""
    digest = CatalogRevision.hash_of(source)

    def plan(store: TemplateStore) -> tuple[list[Record], list[str]]:
        newest = store.catalog()
        if newest is not None and newest[0].content_hash == digest:
            return [], [f"model catalog: unchanged (revision {newest[0].revision})"]
        revision = newest[0].revision + 1 if newest else 1
        record = CatalogRevision(
            revision=revision, source=source, origin=origin, content_hash=digest
        )
        return [record], [f"model catalog: published revision {revision}"]

    return await _transaction(conn, catalog, plan, actor)


def _retrieve(producer: Any, sent: list[asyncio.Future[Any]]) -> None:
    """Mark the errors of a fenced transaction's futures as seen: the fencing is handled by
    retrying, and asyncio would otherwise log each as "exception never retrieved" (aiokafka
    keeps one more in its transaction manager, which it never awaits after a fatal error)."""
    manager = getattr(producer, "_txn_manager", None)
    waiter = manager.wait_for_transaction_end() if manager is not None else None
    for future in [*sent, *([waiter] if waiter is not None else [])]:
        if future.done() and not future.cancelled():
            future.exception()


Record = Template | LabelRecord | CatalogRevision | OnlineChecks
Plan = Callable[[TemplateStore], tuple[list[Record], list[str]]]


def _audit(actor: Actor, record: Record, store: TemplateStore) -> AuditEvent:
    """The audit event of one record of a push (a label move names the version it left)."""
    if isinstance(record, CatalogRevision):
        newest = store.catalog()
        details: dict[str, Any] = {
            "revision": record.revision,
            "from_revision": newest[0].revision if newest else None,
            "content_hash": record.content_hash,
            "origin": record.origin,
        }
        return AuditEvent(
            actor=actor, action=AuditAction.CATALOG_PUSHED, target="models", details=details
        )
    if isinstance(record, OnlineChecks):
        details = {
            "assertions": [a.type for a in record.assertions],
            "threshold": record.threshold,
            "content_hash": record.content_hash,
            "origin": record.origin,
        }
        return AuditEvent(
            actor=actor, action=AuditAction.CHECKS_PUSHED, target=record.name, details=details
        )
    if isinstance(record, Template):
        details = {"version": record.version, "content_hash": record.content_hash}
        return AuditEvent(
            actor=actor, action=AuditAction.TEMPLATE_PUSHED, target=record.name, details=details
        )
    details = {
        "label": record.label,
        "from_version": store.labels(record.name).get(record.label),
        "to_version": record.version,
        "from_canary": store.canary(record.name, record.label),
        "canary": [record.canary_version, record.canary_percent]
        if record.canary_version is not None
        else None,
    }
    return AuditEvent(
        actor=actor, action=AuditAction.LABEL_MOVED, target=record.name, details=details
    )


async def _transaction(
    conn: KafkaConnection, catalog: TopicCatalog, plan: Plan, actor: Actor
) -> list[str]:
    """Read the templates topic, decide what to write, and write it, as one compare-and-set.

    Every writer of the templates topic uses one transactional id. Starting a producer
    with it fences every earlier one (the broker aborts their open transaction and refuses
    their commit), so the order *start, read, write, commit* makes the read current: a push
    that read before another push's commit has been fenced by it, fails to commit, and
    starts over from a fresh read (which then sees the other version and picks the next
    number). Readers see committed records only (:class:`~topics.templates.TemplateRegistry`).
    The audit events of the records go in the same transaction: the trail has a push
    exactly when the registry has it.
    """
    topic = catalog.name(TopicKind.TEMPLATES)
    audit_topic = catalog.name(TopicKind.AUDIT)
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        producer = AIOKafkaProducer(
            **conn.client_options(),
            acks="all",
            enable_idempotence=True,
            transactional_id=catalog.transactional_id(TransactionalId.TEMPLATES),
        )
        sent: list[asyncio.Future[Any]] = []
        await producer.start()  # fences every earlier writer
        try:
            async with TemplateRegistry(conn, topic, follow=False) as registry:
                records, actions = plan(registry.store)
                events = [_audit(actor, record, registry.store) for record in records]
            if not records:
                return actions
            async with producer.transaction():
                for record in records:
                    sent.append(await producer.send(topic, encode(record), key=record.key.encode()))
                for event in events:
                    key = event.target.encode()
                    sent.append(await producer.send(audit_topic, encode(event), key=key))
            return actions
        except (ProducerFenced, IllegalOperation):  # fenced mid-transaction: it aborted
            log.info("another template push won the race (attempt %d); reading again", attempt)
        finally:
            with contextlib.suppress(KafkaError):
                await producer.stop()
            _retrieve(producer, sent)
        # racing writers that retry at once fence each other forever: back off, at random
        await asyncio.sleep(random.uniform(0, 0.2 * 2**attempt))
    raise TemplateFileError(f"gave up after {PUSH_ATTEMPTS} template pushes lost a race")
