"""``promptmill models push|list|show|check``: the model catalog (a revision pushed to the
templates topic, else the ``PROMPTMILL_MODEL_CATALOG`` file)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import orjson
from aiokafka.errors import KafkaError
from openai.types.chat import ChatCompletionMessageParam

from processors.model import timeout_or_unreachable
from processors.routing import client_for
from producers.templates import push_catalog, read_catalog_file
from promptmill import app
from promptmill.settings import Settings
from schemas import ErrorCode, PromptmillError
from schemas.catalog import Catalog, Deployment, load_catalog, single_endpoint
from topics import TopicKind
from topics.templates import TemplateRegistry, TemplateStore

KAFKA_WAIT_SECONDS = 15.0

PROBE: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]


async def catalog_of(settings: Settings, file: Path | None = None) -> Catalog:
    """The catalog the workers use: ``file`` if given; else the newest revision pushed to
    the templates topic (``models push``); else the ``PROMPTMILL_MODEL_CATALOG`` file;
    else the one deployment of ``OPENAI_BASE_URL`` (or the local stack's model). Where it
    came from goes to stderr."""
    if file is not None:
        return _from(load_catalog(file), f"file {file}")
    try:
        store = await asyncio.wait_for(template_store(settings), KAFKA_WAIT_SECONDS)
    except (TimeoutError, KafkaError, PromptmillError, OSError) as exc:
        print(f"(the templates topic cannot be read: {exc}; not looking there)", file=sys.stderr)
    else:
        newest = store.catalog()
        if newest is not None:
            record, catalog = newest
            where = f"revision {record.revision} on the templates topic, from {record.origin}"
            return _from(catalog, where)
    if settings.model_catalog is not None:
        return _from(load_catalog(settings.model_catalog), f"file {settings.model_catalog}")
    endpoint = app.model_endpoint(settings)
    key_env = "OPENAI_API_KEY" if "OPENAI_API_KEY" in os.environ else None
    default = single_endpoint(endpoint.base_url, endpoint.default_model, key_env)
    return _from(default, "none: the one endpoint of OPENAI_BASE_URL")


def _from(catalog: Catalog, where: str) -> Catalog:
    print(f"model catalog: {where}", file=sys.stderr)
    return catalog


async def template_store(settings: Settings) -> TemplateStore:
    """The templates topic as it is now (templates, labels and catalog revisions)."""
    topic = app.catalog(settings).name(TopicKind.TEMPLATES)
    async with TemplateRegistry(app.kafka_connection(settings), topic, follow=False) as registry:
        return registry.store


async def models_push(settings: Settings, args: argparse.Namespace) -> None:
    """Publish a catalog file as the catalog's next revision: every worker follows it."""
    source = read_catalog_file(args.file)
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    actor = app.operator(settings)
    for line in await push_catalog(conn, catalog, source, str(args.file), actor):
        print(line)


async def models_list(settings: Settings, args: argparse.Namespace) -> None:
    catalog = await catalog_of(settings, args.file)
    print(
        f"{'group':<20} {'deployment':<16} {'kind':<10} {'provider model':<24} {'rpm':>7} "
        f"{'tpm':>9} {'$/1M in':>8} {'$/1M out':>8} {'context':>8} {'weight':>6}  base URL"
    )
    for group, entry in sorted(catalog.groups.items()):
        for d in entry.deployments:
            print(
                f"{group[:20]:<20} {d.name[:16]:<16} {d.kind:<10} "
                f"{catalog.provider_model(group, d)[:24]:<24} {d.rpm or '-':>7} "
                f"{d.tpm or '-':>9} {d.price_input_per_1m:>8g} {d.price_output_per_1m:>8g} "
                f"{d.context_window or '-':>8} {d.weight:>6g}  {d.base_url}"
            )


async def models_show(settings: Settings, args: argparse.Namespace) -> None:
    catalog = await catalog_of(settings, args.file)
    group = catalog.groups.get(args.group)
    if group is None:
        raise PromptmillError(
            f"no model group {args.group!r} (groups: {', '.join(sorted(catalog.groups))})"
        )
    shown = group.model_dump(mode="json")
    for d, out in zip(group.deployments, shown["deployments"], strict=True):
        out["key"] = d.key_source()  # where the key is read, never the key
    print(orjson.dumps({args.group: shown}, option=orjson.OPT_INDENT_2).decode())


@dataclass(frozen=True)
class Probe:
    group: str
    deployment: str
    ok: bool
    seconds: float
    detail: str


async def models_check(settings: Settings, args: argparse.Namespace) -> None:
    """One tiny request (``max_tokens`` 1) to every deployment: latency, the rate-limit
    headers it sent, or its error; exits non-zero when one fails."""
    catalog = await catalog_of(settings, args.file)
    groups = [args.group] if args.group else sorted(catalog.groups)
    missing = [g for g in groups if g not in catalog.groups]
    if missing:
        raise PromptmillError(f"no model group {missing[0]!r}")
    probes = await asyncio.gather(
        *(
            probe(catalog, group, deployment)
            for group in groups
            for deployment in catalog.groups[group].deployments
        )
    )
    for p in probes:
        print(
            f"{p.group[:20]:<20} {p.deployment[:16]:<16} {'ok' if p.ok else 'FAILED':<6} "
            f"{p.seconds * 1000:>7.0f} ms  {p.detail}"
        )
    failed = [p for p in probes if not p.ok]
    if failed:
        raise PromptmillError(f"{len(failed)} of {len(probes)} deployment(s) failed the check")


async def probe(catalog: Catalog, group: str, deployment: Deployment) -> Probe:
    started = time.monotonic()
    try:
        client = client_for(deployment)
    except PromptmillError as exc:
        return Probe(group, deployment.name, False, 0.0, str(exc))
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=catalog.provider_model(group, deployment), messages=PROBE, max_tokens=1
        )
        headers = {k: v for k, v in raw.headers.items() if k.lower().startswith("x-ratelimit")}
        seen = " ".join(f"{k.removeprefix('x-ratelimit-')}={v}" for k, v in sorted(headers.items()))
        return Probe(
            group,
            deployment.name,
            True,
            time.monotonic() - started,
            f"HTTP {raw.http_response.status_code}; {seen or 'no x-ratelimit headers'}",
        )
    except openai.APIStatusError as exc:
        detail = f"HTTP {exc.status_code}: {str(exc.message)[:200]}"
    except openai.APITimeoutError as exc:
        unreachable = timeout_or_unreachable(exc) is ErrorCode.MODEL_ERROR
        detail = (
            "cannot connect (Connection refused or unreachable)"
            if unreachable
            else f"timed out after {deployment.timeout_seconds:g} s"
        )
    except openai.APIError as exc:
        detail = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        await client.close()
    return Probe(group, deployment.name, False, time.monotonic() - started, detail)
