"""``topics`` and ``templates``: provisioning and the template registry."""

from __future__ import annotations

import argparse

from producers.prompt_tests import version_of
from producers.templates import load_template_dir, move_label, push_templates
from promptmill import app
from promptmill.commands.prompt_tests import require_tests
from promptmill.settings import Settings
from schemas import encode
from topics import TopicKind
from topics.admin import TopicState, apply_topics, describe_topics
from topics.templates import TemplateRegistry


async def topics_apply(settings: Settings, args: argparse.Namespace) -> None:
    for line in await apply_topics(app.kafka_connection(settings), app.catalog(settings)):
        print(line)


async def topics_describe(settings: Settings, args: argparse.Namespace) -> None:
    rows = await describe_topics(app.kafka_connection(settings), app.catalog(settings))
    print(f"{'topic':<40} {'partitions':>10} {'replicas':>8} {'records':>10}  config")
    for row in rows:
        if isinstance(row, TopicState):
            config = ", ".join(
                f"{k}={row.config.get(k)}" for k in ("cleanup.policy", "retention.ms")
            )
            print(
                f"{row.name:<40} {row.partitions:>10} {row.replication:>8} {row.records:>10}  "
                f"{config}"
            )
        else:
            print(f"{row:<40} {'(missing: run `promptmill topics apply`)':>30}")


async def templates_push(settings: Settings, args: argparse.Namespace) -> None:
    files = load_template_dir(args.directory)
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    actor = app.operator(settings)
    if args.require_tests and args.label is None:
        raise SystemExit("promptmill: --require-tests guards a label move: give --label")
    if args.require_tests:
        # publish the versions, test them, and only then move the label
        for line in await push_templates(conn, catalog, files, None, actor):
            print(line)
        refs = {f.body.name: f"{f.body.name}@{await version_of(conn, catalog, f)}" for f in files}
        await require_tests(settings, args.directory, refs, args.label)
    for line in await push_templates(conn, catalog, files, args.label, actor):
        print(line)


async def templates_label(settings: Settings, args: argparse.Namespace) -> None:
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    if args.require_tests is not None:
        ref = f"{args.name}@{args.version}"
        await require_tests(settings, args.require_tests, {args.name: ref}, args.label)
    await move_label(conn, catalog, args.name, args.label, args.version, app.operator(settings))
    print(f"{args.name}: label {args.label} -> version {args.version}")


async def _store(settings: Settings) -> TemplateRegistry:
    topic = app.catalog(settings).name(TopicKind.TEMPLATES)
    registry = TemplateRegistry(app.kafka_connection(settings), topic, follow=False)
    await registry.start()
    return registry


async def templates_list(settings: Settings, args: argparse.Namespace) -> None:
    store = (await _store(settings)).store
    print(f"{'template':<30} {'latest':>6}  labels")
    for name in store.names():
        latest = store.latest(name)
        labels = ", ".join(f"{k}={v}" for k, v in store.labels(name).items()) or "-"
        print(f"{name:<30} {latest.version if latest else '-':>6}  {labels}")


async def templates_show(settings: Settings, args: argparse.Namespace) -> None:
    store = (await _store(settings)).store
    template = store.resolve(args.ref)
    print(encode(template).decode())
