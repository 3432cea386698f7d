"""A fuzzed input stream: 10,000 hostile records among 1,000 good jobs, from a raw producer.

Random bytes, invalid UTF-8, JSON nested 10,000 deep, 10^400 numbers, wrong types in every
field, raw NUL bytes, 0.9 MB strings, missing and duplicated headers, unknown schema
versions, template refs like ``../../etc``, empty and truncated records. The worker must
not crash or restart, every good job must complete, every bad record must become exactly
one dead letter with a specific code (never ``internal_error``), and the worker's memory
must stay under a stated bound.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from promptmill.dev.harness import Env, until
from schemas import Completion, ErrorCode, Failure
from topics import TopicKind
from topics.partitions import topic_partitions

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]
RSS_BOUND_MB = 250  # the worker process (not its render children), while it works through it
WRONG: dict[str, list[Any]] = {  # values of the wrong type (or out of range) per field
    "job_id": [None, 3, [], {}, ""],
    "batch_id": [None, 3, [], {"a": 1}, ""],
    "tenant": [None, 3, [], ""],
    "custom_id": [3, [], {}],
    "template": [3, [], {}, 1.5],
    "template_version": ["x", 0, -1, 1.5, [], {}],
    "variables": [3, "x", [], None],
    "messages": [3, "x", {}, [1], [{"role": "user"}]],
    "model": [3, [], {}, ""],
    "params": [3, "x", [], {"temperature": "hot"}, {"top_k": 1}, {"max_tokens": 0}],
    "cache": ["x", [], {}, 3],
    "metadata": [3, "x", [], None],
    "run": ["x", 0, -1, [], 1.5],
}
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]  # key, value, headers


def _good(rng: random.Random, n: int) -> dict[str, Any]:
    return {"job_id": f"fz:g{n}", "batch_id": "fz", "template": "greet", "variables": {"who": n}}


def _headers(rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """Headers as a hostile (or sloppy) producer sets them: missing, repeated, contradicting,
    not UTF-8."""
    choice = rng.randrange(5)
    if choice == 0:
        return []
    if choice == 1:
        return [("pm-batch-id", b"fz"), ("pm-batch-id", b"other")]
    if choice == 2:
        return [("pm-job-id", rng.randbytes(40)), ("pm-tenant", b"\xff\xfe")]
    if choice == 3:
        return [("pm-batch-id", b"x" * 5000), ("pm-run", b"-7")]
    return [("pm-batch-id", b"fz"), ("pm-job-id", f"fz:b{n}".encode())]


def _kinds() -> dict[str, tuple[int, Callable[[random.Random, int], bytes | None], set[str]]]:
    """Category -> (how many, generator of a value, the codes it may get)."""

    def nested(rng: random.Random, n: int) -> bytes:
        deep = b"[" * 10_000 + b"]" * 10_000
        return b'{"job_id": "fz:b%d", "batch_id": "fz", "variables": {"x": ' % n + deep + b"}}"

    def huge_number(rng: random.Random, n: int) -> bytes:
        field = rng.choice(["template_version", "run", "variables", "params", "metadata"])
        number = rng.choice([b"1" + b"0" * 400, b"1e400", b"-1e400", b"9" * 500 + b".5"])
        value = b'{"n": ' + number + b"}" if field in ("variables", "metadata") else number
        if field == "params":
            value = b'{"seed": ' + number + b"}"
        job = b'{"job_id": "fz:b%d", "batch_id": "fz", "template": "greet", ' % n
        return job + b'"' + field.encode() + b'": ' + value + b"}"

    def wrong_type(rng: random.Random, n: int) -> bytes:
        job = _good(rng, n) | {"job_id": f"fz:b{n}"}
        field = rng.choice(sorted(WRONG))
        job[field] = rng.choice(WRONG[field])
        return orjson.dumps(job)

    def big_string(rng: random.Random, n: int) -> bytes:
        job = _good(rng, n) | {"job_id": f"fz:b{n}"}
        field = rng.choice(["template", "model", "custom_id", "messages"])
        text = "y" * 900_000
        if field == "messages":
            job.pop("template")
            job["messages"] = [{"role": "user", "content": text}]
        else:
            job[field] = text
        return orjson.dumps(job)

    def template_ref(rng: random.Random, n: int) -> bytes:
        ref = rng.choice(["../../etc/passwd", "/etc", "greet@../x", "gr eet", "@", "a@b@c", ""])
        return orjson.dumps({"job_id": f"fz:b{n}", "batch_id": "fz", "template": ref})

    def version(rng: random.Random, n: int) -> bytes:
        job = _good(rng, n) | {"job_id": f"fz:b{n}", "schema_version": rng.choice([0, 2, 99, "1"])}
        return orjson.dumps(job)

    def truncated(rng: random.Random, n: int) -> bytes:
        whole = orjson.dumps(_good(rng, n) | {"job_id": f"fz:b{n}"})
        return whole[: rng.randrange(1, len(whole) - 1)]

    def nul(rng: random.Random, n: int) -> bytes:
        return b'{"job_id": "fz:b%d", "batch_id": "fz\x00", "template": "greet\x00"}' % n

    def random_bytes(rng: random.Random, n: int) -> bytes:
        return rng.randbytes(rng.randrange(1, 3000))

    def empty(rng: random.Random, n: int) -> bytes | None:
        return rng.choice([None, b"", b"null", b"{}", b"[]"])

    def invalid_utf8(rng: random.Random, n: int) -> bytes:
        return b'{"job_id": "fz:b%d", "batch_id": "\xff\xfe\xc3\x28", "template": "greet"}' % n

    return {
        "random_bytes": (
            1000,
            lambda rng, n: rng.randbytes(rng.randrange(1, 3000)),
            {"invalid_json"},
        ),
        "invalid_utf8": (1000, invalid_utf8, {"invalid_json"}),
        "nested_10000": (500, nested, {"invalid_json"}),
        "huge_number": (1000, huge_number, {"invalid_json", "schema_error"}),
        "wrong_type": (2000, wrong_type, {"schema_error"}),
        "nul_bytes": (1000, nul, {"invalid_json"}),
        "string_0.9mb": (100, big_string, {"schema_error", "prompt_too_long"}),
        "schema_version": (1000, version, {"schema_error"}),
        "template_ref": (1000, template_ref, {"schema_error"}),
        "empty": (
            400,
            lambda rng, n: rng.choice([None, b"", b"null", b"{}", b"[]"]),
            {"invalid_json", "schema_error"},
        ),
        "truncated": (1000, truncated, {"invalid_json"}),
    }


async def test_10000_hostile_records_among_1000_good_jobs(env: Env) -> None:
    await env.push_templates(TEMPLATES)
    rng = random.Random(20261130)
    stream: list[tuple[str, Record]] = []
    for kind, (count, make, _) in _kinds().items():
        for _ in range(count):
            n = len(stream)
            value = make(rng, n)
            keyless = rng.random() < 0.1 and value is not None  # a record needs one of the two
            key = None if keyless else f"fz:b{n}".encode()
            stream.append((kind, (key, value, _headers(rng, n))))
    for i in range(1000):
        good = orjson.dumps(_good(rng, i))
        stream.append(("good", (f"fz:g{i}".encode(), good, _headers(rng, 10_000 + i))))
    rng.shuffle(stream)
    assert sum(kind != "good" for kind, _ in stream) == 10_000

    positions = await _produce(env, [record for _, record in stream])
    good_positions = {
        (record[0] or b"").decode(): position
        for (kind, record), position in zip(stream, positions, strict=True)
        if kind == "good"
    }
    worker = env.start_worker()
    peak = {"rss": 0}

    def rss() -> int:
        status = Path(f"/proc/{worker.process.pid}/status").read_text()
        return next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS")
        )

    outcomes: dict[tuple[int, int], list[Completion | Failure]] = {}
    consumer = await _terminal_reader(env)
    try:
        deadline_records = len(stream)

        async def read() -> None:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for record in records:
                    kind = record.topic.rsplit(".", 1)[1]
                    parsed: Completion | Failure = (
                        Completion.model_validate_json(record.value)
                        if kind == TopicKind.COMPLETIONS.value
                        else Failure.model_validate_json(record.value)
                    )
                    source = _source(parsed, good_positions)
                    outcomes.setdefault(source, []).append(parsed)

        async def pump() -> None:
            while len(outcomes) < deadline_records:
                await read()
                peak["rss"] = max(peak["rss"], rss())

        await asyncio.wait_for(pump(), 360)
        await asyncio.sleep(2)
        await read()  # anything repeated would show up now
    finally:
        await consumer.stop()
    await until(lambda: worker.process.poll() is None, within=1)

    codes: Counter[tuple[str, str]] = Counter()
    for (kind, _), position in zip(stream, positions, strict=True):
        got = outcomes[position]
        assert len(got) == 1, (kind, got)  # exactly one terminal record, no repeats
        record = got[0]
        if kind == "good":
            assert isinstance(record, Completion), record
            continue
        assert isinstance(record, Failure), (kind, record)
        assert record.code is not ErrorCode.INTERNAL_ERROR, (kind, record)
        assert record.code.value in _kinds()[kind][2], (kind, record.code, record.message)
        assert len(record.model_dump_json()) < 64_000
        codes[(kind, record.code.value)] += 1
    rss_mb = peak["rss"] / 1024
    print(f"worker peak RSS {rss_mb:.0f} MB (bound {RSS_BOUND_MB} MB); dead letters by kind/code:")
    for (kind, code), count in sorted(codes.items()):
        print(f"  {kind:<16} {code:<18} {count}")
    assert worker.process.poll() is None, worker.tail()
    assert "Traceback" not in worker.log.read_text(errors="replace"), worker.tail(80)
    assert rss_mb < RSS_BOUND_MB


def _source(record: Completion | Failure, good: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """The (partition, offset) of the job record an outcome belongs to."""
    if isinstance(record, Failure):
        assert record.source is not None and record.source.partition is not None
        assert record.source.offset is not None
        return record.source.partition, record.source.offset
    return good[record.job_id]


async def _produce(env: Env, records: list[Record]) -> list[tuple[int, int]]:
    """Produce every record raw, as any client could; their (partition, offset) in order."""
    producer = AIOKafkaProducer(
        bootstrap_servers=env.endpoints.bootstrap, acks="all", max_request_size=8 << 20
    )
    await producer.start()
    try:
        topic = env.catalog.name(TopicKind.JOBS)
        futures = [
            await producer.send(topic, value, key=key, headers=headers)
            for key, value, headers in records
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]


async def _terminal_reader(env: Env) -> Any:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.endpoints.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    tps = []
    for kind in (TopicKind.COMPLETIONS, TopicKind.FAILURES):
        tps += await topic_partitions(consumer, env.catalog.name(kind))
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return consumer
