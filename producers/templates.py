"""Template files and ``templates push``.

A template file is YAML: ``name``, ``description``, ``model``, ``params``, ``variables``
(required ones) and ``messages`` (Jinja in ``content``). Pushing publishes a new
immutable version only when the content changed, then moves the requested label.
Errors name the file, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer
from jinja2 import TemplateError
from pydantic import ValidationError

from processors.templates import Renderer, TemplateRegistry
from schemas import LabelRecord, PromptmillError, Template, encode
from schemas.templates import TemplateBody
from topics import KafkaConnection, TopicCatalog, TopicKind


class TemplateFileError(PromptmillError):
    """A template file that cannot be loaded; the message names file, line and field."""


@dataclass(frozen=True)
class TemplateFile:
    path: Path
    body: TemplateBody


def load_template_dir(directory: Path) -> list[TemplateFile]:
    """Every ``*.yaml``/``*.yml`` template below ``directory``, validated."""
    if not directory.is_dir():
        raise TemplateFileError(f"{directory}: not a directory")
    files = sorted(p for p in directory.rglob("*") if p.suffix in {".yaml", ".yml"})
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
    return loaded


def load_template_file(path: Path) -> TemplateFile:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise TemplateFileError(
            f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(data, dict):
        raise TemplateFileError(f"{path}:1: a template file must be a YAML mapping")
    try:
        body = TemplateBody.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])
        field = ".".join(str(p) for p in loc)
        raise TemplateFileError(
            f"{path}:{_line_of(node, loc)}: field {field}: {err['msg']}"
        ) from None
    renderer = Renderer()
    for index, message in enumerate(body.messages):
        try:
            renderer.variables_used(message.content)
        except TemplateError as exc:
            where = _line_of(node, ["messages", index, "content"])
            raise TemplateFileError(
                f"{path}:{where}: field messages.{index}.content: Jinja syntax error: {exc}"
            ) from None
    return TemplateFile(path, body)


def _line_of(node: Any, loc: list[Any]) -> int:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == part]
            if not match:
                return line
            node = match[0]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


async def push_templates(
    conn: KafkaConnection, catalog: TopicCatalog, files: list[TemplateFile], label: str | None
) -> list[str]:
    """Publish changed templates as new versions and move ``label``; returns what was done."""
    topic = catalog.name(TopicKind.TEMPLATES)
    async with TemplateRegistry(conn, topic, follow=False) as registry:
        store = registry.store
    producer = AIOKafkaProducer(**conn.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    actions = []
    try:
        for item in files:
            body, name = item.body, item.body.name
            digest = body.compute_hash()
            latest = store.latest(name)
            if latest is not None and latest.content_hash == digest:
                version = latest.version
                actions.append(f"{name}: unchanged (version {version})")
            else:
                version = latest.version + 1 if latest else 1
                record = Template(**body.model_dump(), version=version, content_hash=digest)
                await producer.send_and_wait(topic, encode(record), key=record.key.encode())
                actions.append(f"{name}: published version {version}")
            if label is not None and store.labels(name).get(label) != version:
                moved = LabelRecord(name=name, label=label, version=version)
                await producer.send_and_wait(topic, encode(moved), key=moved.key.encode())
                actions.append(f"{name}: label {label} -> version {version}")
    finally:
        await producer.stop()
    return actions


async def move_label(
    conn: KafkaConnection, catalog: TopicCatalog, name: str, label: str, version: int
) -> None:
    """Point ``name@label`` at an existing ``version`` (a rollback is just this)."""
    topic = catalog.name(TopicKind.TEMPLATES)
    async with TemplateRegistry(conn, topic, follow=False) as registry:
        registry.store.resolve(f"{name}@{version}")
    producer = AIOKafkaProducer(**conn.client_options(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        moved = LabelRecord(name=name, label=label, version=version)
        await producer.send_and_wait(topic, encode(moved), key=moved.key.encode())
    finally:
        await producer.stop()
