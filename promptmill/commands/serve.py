"""``serve``: the HTTP front door; ``keys``, ``tenants`` and ``audit``: what it answers to."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta

from aiohttp import web

from producers.client import Client
from producers.serve.app import build_app, tls_context
from producers.serve.context import Limits, Serve, ServeMetrics
from promptmill import app
from promptmill.settings import Settings, SettingsError
from schemas.audit import AuditAction
from topics.audit import AuditLog, read_audit
from topics.batch_index import BatchIndex
from topics.budgets import Budgets, TenantPolicy
from topics.keys import KeyStore, Role
from topics.metrics import Registry
from topics.objects import Objects
from topics.redis import RedisClient

log = logging.getLogger(__name__)


def _redis(settings: Settings) -> RedisClient:
    redis = app.redis(settings)
    if redis is None:
        raise SettingsError("this command needs Redis: set REDIS_URL or `promptmill dev up`")
    return redis


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Serve]:
    """Everything ``serve`` holds, started, and stopped on exit."""
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    prefix = settings.redis_key_prefix
    async with AsyncExitStack() as stack:
        redis = _redis(settings)
        stack.push_async_callback(redis.aclose)
        index = BatchIndex(redis, prefix, conn, catalog)
        client = await stack.enter_async_context(
            Client(conn, catalog, index=index, max_job_bytes=settings.max_job_bytes)
        )
        audit = await stack.enter_async_context(AuditLog(conn, catalog))
        blobs = app.blob_store(settings)
        await blobs.start()
        stack.push_async_callback(blobs.stop)
        keys = KeyStore(redis, prefix)
        registry = Registry()
        yield Serve(
            redis=redis,
            prefix=prefix,
            keys=keys,
            objects=Objects(redis, prefix),
            blobs=blobs,
            client=client,
            index=index,
            audit=audit,
            registry=registry,
            stats=ServeMetrics(registry),
            budgets=Budgets(redis, prefix, keys),
            limits=Limits(
                max_file_bytes=settings.serve_max_file_bytes,
                max_requests=settings.serve_max_requests,
                max_line_bytes=await client.job_limit(),
                lease_seconds=settings.serve_lease_seconds,
            ),
        )


async def serve(settings: Settings, args: argparse.Namespace) -> None:
    try:
        tls = tls_context(settings.serve_tls_cert, settings.serve_tls_key)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    host = args.host or settings.serve_host
    port = args.port if args.port is not None else settings.serve_port
    async with serving(settings) as context:
        runner = web.AppRunner(build_app(context), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=tls)
        await site.start()
        bound = runner.addresses[0][1]
        scheme = "https" if tls else "http"
        log.info("serving the OpenAI Files and Batches API on %s://%s:%d/v1", scheme, host, bound)
        print(f"promptmill serve: {scheme}://{host}:{bound}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()


async def keys_create(settings: Settings, args: argparse.Namespace) -> None:
    redis = _redis(settings)
    try:
        store = KeyStore(redis, settings.redis_key_prefix)
        expires = (
            datetime.now(UTC) + timedelta(days=args.expires_days) if args.expires_days else None
        )
        secret, key = await store.create(
            args.tenant,
            [Role(r) for r in args.role],
            name=args.name or "",
            models=args.model or None,
            expires_at=expires,
            budget_usd=args.budget_usd,
            budget_period=args.budget_period,
        )
        async with AuditLog(app.kafka_connection(settings), app.catalog(settings)) as audit:
            await audit.record(
                app.operator(settings),
                AuditAction.KEY_CREATED,
                key.key_id,
                tenant=key.tenant,
                roles=[r.value for r in key.roles],
            )
    finally:
        await redis.aclose()
    print(f"{key.key_id}  tenant {key.tenant}  roles {','.join(key.roles)}", file=sys.stderr)
    print("the key (shown once, store it now):", file=sys.stderr)
    print(secret)


async def keys_list(settings: Settings, args: argparse.Namespace) -> None:
    redis = _redis(settings)
    try:
        found = await KeyStore(redis, settings.redis_key_prefix).list(args.tenant)
    finally:
        await redis.aclose()
    print(f"{'key id':<22} {'tenant':<16} {'roles':<24} {'state':<10} {'name'}")
    for key in found:
        state = "revoked" if key.revoked_at else ("expired" if not key.usable() else "active")
        print(f"{key.key_id:<22} {key.tenant:<16} {','.join(key.roles):<24} {state:<10} {key.name}")


async def keys_revoke(settings: Settings, args: argparse.Namespace) -> None:
    redis = _redis(settings)
    try:
        key = await KeyStore(redis, settings.redis_key_prefix).revoke(args.key_id)
        async with AuditLog(app.kafka_connection(settings), app.catalog(settings)) as audit:
            await audit.record(
                app.operator(settings), AuditAction.KEY_REVOKED, key.key_id, tenant=key.tenant
            )
    finally:
        await redis.aclose()
    print(
        f"revoked {key.key_id} (tenant {key.tenant}); every serve replica refuses it within seconds"
    )


async def tenants_set(settings: Settings, args: argparse.Namespace) -> None:
    redis = _redis(settings)
    try:
        prefix = settings.redis_key_prefix
        budgets = Budgets(redis, prefix, KeyStore(redis, prefix))
        policy = TenantPolicy(
            rpm=args.rpm, tpm=args.tpm, budget_usd=args.budget_usd, budget_period=args.budget_period
        )
        await budgets.set_policy(args.tenant, policy)
    finally:
        await redis.aclose()
    print(f"tenant {args.tenant}: {policy.model_dump_json(exclude_none=True)}")


async def tenants_show(settings: Settings, args: argparse.Namespace) -> None:
    redis = _redis(settings)
    try:
        prefix = settings.redis_key_prefix
        budgets = Budgets(redis, prefix, KeyStore(redis, prefix))
        policies = await budgets.policies()
        for tenant, policy in sorted(policies.items()):
            uses = await budgets.use(tenant, None)
            spent = "; ".join(
                f"{u.scope} ${u.spent_usd:.4f} of ${u.limit_usd:g} per {u.period}" for u in uses
            )
            quota = f"rpm {policy.rpm or '-'} tpm {policy.tpm or '-'}"
            print(f"{tenant:<20} {quota:<24} {spent or 'no budget'}")
    finally:
        await redis.aclose()


async def audit(settings: Settings, args: argparse.Namespace) -> None:
    since = None
    if args.since:
        since = _since(args.since)
    conn, catalog = app.kafka_connection(settings), app.catalog(settings)
    if args.format == "table":
        print(f"{'when (UTC)':<20} {'action':<16} {'target':<40} {'tenant':<14} who")
    async for event in read_audit(conn, catalog, since=since, tenant=args.tenant):
        if args.format == "json":
            print(event.model_dump_json())
            continue
        details = " ".join(f"{k}={v}" for k, v in event.details.items())
        print(
            f"{event.at:%Y-%m-%d %H:%M:%S} {event.action.value:<16} {event.target[:40]:<40} "
            f"{event.tenant or '-':<14} {event.actor}{'  ' + details if details else ''}"
        )


def _since(value: str) -> datetime:
    """``2026-11-30``, an ISO time, or a duration back from now (``90m``, ``2h``, ``7d``)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise SettingsError(f"--since: not a time or a duration: {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
