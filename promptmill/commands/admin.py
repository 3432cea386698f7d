"""``topics`` and ``templates``: provisioning and the template registry."""

from __future__ import annotations

import argparse

from producers.prompt_tests import version_of
from producers.templates import end_canary, load_template_dir, move_label, push_templates
from promptmill import app
from promptmill.commands.prompt_tests import require_tests
from promptmill.settings import Settings
from schemas import encode
from topics import TopicKind
from topics.admin import TopicState, apply_topics, describe_topics
from topics.templates import TemplateRegistry, TemplateStore


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


def canary_option(value: str) -> tuple[int, float]:
    """``--canary 4:10%``: (version, percent)."""
    version, _, percent = value.partition(":")
    try:
        parsed = int(version), float(percent.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--canary {value!r}: expected VERSION:PERCENT, e.g. 4:10%"
        ) from None
    if parsed[0] < 1 or not 0 < parsed[1] < 100:
        raise argparse.ArgumentTypeError(
            f"--canary {value!r}: a version from 1 and a percent above 0 and below 100"
        )
    return parsed


async def templates_label(settings: Settings, args: argparse.Namespace) -> None:
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    canary: tuple[int, float] | None = args.canary
    if args.require_tests is not None:
        refs = {args.name: f"{args.name}@{canary[0] if canary else args.version}"}
        await require_tests(settings, args.require_tests, refs, args.label)
    await move_label(
        conn, catalog, args.name, args.label, args.version, app.operator(settings), canary
    )
    suffix = f", canary version {canary[0]} for {canary[1]:g}% of the jobs" if canary else ""
    print(f"{args.name}: label {args.label} -> version {args.version}{suffix}")


async def templates_promote(settings: Settings, args: argparse.Namespace) -> None:
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    version = await end_canary(conn, catalog, args.name, args.label, True, app.operator(settings))
    print(f"{args.name}: label {args.label} -> version {version} (canary promoted)")


async def templates_rollback(settings: Settings, args: argparse.Namespace) -> None:
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    version = await end_canary(conn, catalog, args.name, args.label, False, app.operator(settings))
    print(f"{args.name}: label {args.label} stays at version {version} (canary stopped)")


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
        labels = ", ".join(_label(store, name, k, v) for k, v in store.labels(name).items())
        labels = labels or "-"
        print(f"{name:<30} {latest.version if latest else '-':>6}  {labels}")


def _label(store: TemplateStore, name: str, label: str, version: int) -> str:
    canary = store.canary(name, label)
    return f"{label}={version}" + (f" (canary {canary[0]} at {canary[1]:g}%)" if canary else "")


async def templates_show(settings: Settings, args: argparse.Namespace) -> None:
    store = (await _store(settings)).store
    template = store.resolve(args.ref)
    print(encode(template).decode())
