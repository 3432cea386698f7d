"""The experiment's input (records and their exact totals) and reading results back."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.faust_exactness.common import MODELS, TEMPLATES, TENANTS, WINDOW_S, Totals


@dataclass(frozen=True)
class Input:
    records: list[dict[str, Any]]  # in publishing order, upstream repeats included
    unique: int
    by_records: Totals
    by_unique: Totals

    @classmethod
    def make(cls, count: int, dup_share: float, seed: int) -> Input:
        records = make_records(count, dup_share, span_s=300, seed=seed)
        by_records: Totals = {}
        by_unique: Totals = {}
        seen: set[str] = set()
        for r in records:
            _add(by_records, r)
            if r["job_id"] not in seen:
                seen.add(r["job_id"])
                _add(by_unique, r)
        return cls(records, len(seen), by_records, by_unique)


def _add(totals: Totals, rec: dict[str, Any]) -> None:
    key = (
        f"{rec['tenant']}|{rec['template']}|{rec['model']}",
        int(rec["created_at"] // WINDOW_S * WINDOW_S),
    )
    c, t, m = totals.get(key, (0, 0, 0))
    totals[key] = (c + 1, t + rec["tokens"], m + rec["cost_micros"])


def make_records(count: int, dup_share: float, span_s: int, seed: int) -> list[dict[str, Any]]:
    """``count`` unique completions over ``span_s`` s of event time, plus repeats."""
    rng = random.Random(seed)
    base = (time.time() - span_s - WINDOW_S) // WINDOW_S * WINDOW_S
    records = []
    for i in range(count):
        tokens = rng.randint(20, 2000)
        records.append(
            {
                "job_id": f"job-{seed}-{i:07d}",
                "tenant": rng.choice(TENANTS),
                "template": rng.choice(TEMPLATES),
                "model": rng.choice(MODELS),
                "tokens": tokens,
                "cost_micros": tokens * rng.choice((2, 3, 15)),
                "created_at": round(base + rng.uniform(0, span_s), 3),
            }
        )
    # upstream is at-least-once: some completions are published twice, a little later
    for i in sorted(rng.sample(range(count), int(count * dup_share)), reverse=True):
        records.insert(min(len(records), i + rng.randint(1, 500)), dict(records[i]))
    return records


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, records: list[dict[str, Any]], rate: float, by_agg: bool
) -> None:
    """Publish ``records`` at about ``rate`` per second (idempotent producer, acks=all).

    Keyed by job id, or by the aggregate key if ``by_agg``.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        t0 = time.monotonic()
        futures = []
        for i, r in enumerate(records):
            key = f"{r['tenant']}|{r['template']}|{r['model']}" if by_agg else r["job_id"]
            futures.append(
                await producer.send(topic, key=key.encode(), value=json.dumps(r).encode())
            )
            if i % 50 == 49:
                await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
        await producer.flush()
        for fut in futures:
            await fut
    finally:
        await producer.stop()


# --------------------------------------------------------------------------- reading back


async def read_topic(
    bootstrap: str, topic: str, isolation: str = "read_committed"
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of ``topic`` visible at ``isolation``, partition by partition."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level=isolation,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None]] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for msgs in batch.values():
                out.extend((m.key, m.value) for m in msgs)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()


def _last(rows: list[tuple[bytes | None, bytes | None]]) -> dict[bytes, bytes]:
    """The last value per key (a key whose last value is a tombstone: absent)."""
    last: dict[bytes, bytes | None] = {}
    for k, v in rows:
        if k is not None:
            last[k] = v
    return {k: v for k, v in last.items() if v is not None}


def last_values_changelog(rows: list[tuple[bytes | None, bytes | None]]) -> Totals:
    totals: Totals = {}
    for k, v in _last(rows).items():
        key, (start, _end) = json.loads(k)
        c, t, m = json.loads(v)
        totals[(key, int(start))] = (c, t, m)
    return totals


def state_resets(rows: list[tuple[bytes | None, bytes | None]]) -> int:
    """Committed changelog updates whose count is not above the key's previous count.

    Every update adds 1, so a healthy changelog counts 1, 2, 3, ... per key (replays just
    continue counting). A value at or below the previous one means the worker restarted
    from a table state that missed committed updates (lost state after recovery).
    """
    last: dict[bytes, int] = {}
    resets = 0
    for k, v in rows:
        if k is None or v is None:
            continue
        count = json.loads(v)[0]
        if count <= last.get(k, 0):
            resets += 1
        last[k] = count
    return resets


def last_values_sink(rows: list[tuple[bytes | None, bytes | None]]) -> Totals:
    totals: Totals = {}
    for k, v in _last(rows).items():
        key, _, start = k.decode().rpartition("@")
        d = json.loads(v)
        totals[(key, int(start))] = (d["count"], d["tokens"], d["cost_micros"])
    return totals


@dataclass
class Diff:
    count: int
    tokens: int
    cost: int
    windows_wrong: int
    windows_expected: int


def diff(observed: Totals, expected: Totals) -> Diff:
    keys = set(observed) | set(expected)
    wrong = sum(1 for k in keys if observed.get(k) != expected.get(k))
    s_obs = [sum(v[i] for v in observed.values()) for i in range(3)]
    s_exp = [sum(v[i] for v in expected.values()) for i in range(3)]
    return Diff(s_obs[0] - s_exp[0], s_obs[1] - s_exp[1], s_obs[2] - s_exp[2], wrong, len(expected))
