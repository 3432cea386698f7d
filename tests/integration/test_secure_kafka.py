"""A broker on SASL_SSL only (``promptmill dev up --secure``): every client authenticates.

The stack's broker has one client listener, SASL_SSL with SCRAM-SHA-512 users, and a
certificate signed by a CA generated at start. A client without credentials, with a wrong
password or without the CA is refused; the CLI and the workers, given no Kafka setting at
all, take the broker and its credentials from the stack, or from explicit
``PROMPTMILL_KAFKA_*`` settings, and run a batch to the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import stat
import subprocess
import sys
from pathlib import Path

import openai
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from promptmill.dev.harness import ROOT, Env, wait_ready, write_jsonl
from promptmill.dev.stack import load_stack
from topics import KafkaConnection

TEMPLATES = Path(__file__).parent / "templates"
JOBS = 20
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def _refused(conn: KafkaConnection) -> None:
    producer = AIOKafkaProducer(**conn.client_options(), request_timeout_ms=5000)
    try:
        with pytest.raises(KafkaConnectionError):
            await producer.start()
    finally:
        await producer.stop()


async def test_a_batch_runs_over_sasl_ssl_and_strangers_are_refused(
    secure_env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = secure_env
    info = load_stack(env.state_dir)
    assert info is not None and info.kafka is not None
    security = info.kafka.security
    assert security is not None
    password = security.password()
    conn = env.conn
    assert (conn.security_protocol, conn.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (conn.sasl_username, conn.sasl_password) == (security.username, password)
    assert conn.ssl_cafile == security.ca_file
    assert stat.S_IMODE(security.password_file.stat().st_mode) == 0o600
    assert password not in (env.state_dir / "stack.json").read_text()
    status = env.cli("dev", "status").stdout
    assert f"SASL_SSL://{info.kafka.bootstrap}" in status and "running" in status

    # (1) strangers: no TLS and no SASL, a wrong password, an unknown CA (system trust store)
    caplog.set_level(logging.ERROR, logger="aiokafka")
    await _refused(KafkaConnection(info.kafka.bootstrap))
    await _refused(dataclasses.replace(conn, sasl_password="not-the-password"))
    assert "SaslAuthenticationFailed" in caplog.text, caplog.text
    assert "invalid credentials" in caplog.text
    await _refused(dataclasses.replace(conn, ssl_cafile=None))
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text, caplog.text
    wrong = _cli(_explicit(env, "not-the-password"), "topics", "apply")
    assert wrong.returncode != 0
    assert "cannot reach Kafka" in wrong.stderr and "invalid credentials" in wrong.stderr

    # (2) the whole pipeline over SASL_SSL, with the settings from the stack
    env.cli("topics", "apply")
    await env.push_templates(TEMPLATES)
    workers = [env.start_worker(), env.start_worker("--processor", "batches")]
    rows = [
        {"template": "greet", "variables": {"who": f"s{i}"}, "cache": False} for i in range(JOBS)
    ]
    jobs = write_jsonl(tmp_path / "jobs.jsonl", rows)

    # `run` with explicit PROMPTMILL_KAFKA_* settings (no stack lookup for Kafka)
    out = tmp_path / "run.jsonl"
    ran = await asyncio.to_thread(
        _cli, _explicit(env, password), "run", str(jobs), "--batch-id", "sec1", "-o", str(out)
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert f"completed   {JOBS} " in ran.stdout and "failed      0 (none)" in ran.stdout
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == JOBS == len({line["job_id"] for line in lines})
    assert {line["kind"] for line in lines} == {"completion"}

    # `submit` + `results --follow` + `status` with the settings from the stack
    submitted = await asyncio.to_thread(env.cli, "submit", str(jobs), "--batch-id", "sec2")
    assert f"{JOBS} jobs submitted" in submitted.stdout
    results = await asyncio.to_thread(env.cli, "results", "sec2", "--follow", timeout=60)
    records = [orjson.loads(line) for line in results.stdout.splitlines()]
    assert len(records) == JOBS and all(r["kind"] == "completion" for r in records)
    for batch in ("sec1", "sec2"):
        done = await _status_until_done(env, batch)
        assert f"completed   {JOBS} " in done and "failed      0 (none)" in done

    # the HTTP front door over SASL_SSL too: serve and the outputs worker authenticate
    workers.append(env.start_worker("--processor", "outputs"))
    serve, base_url = env.start_serve()
    workers.append(serve)
    await wait_ready(base_url.removesuffix("/v1"))
    key = env.api_key("acme", "submitter")  # audited: the CLI writes to the audit topic
    requests = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "promptmill-sim", "messages": [{"role": "user", "content": "hi"}]},
        }
        for i in range(JOBS)
    ]
    async with openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0) as client:
        uploaded = await client.files.create(
            file=write_jsonl(tmp_path / "openai.jsonl", requests), purpose="batch"
        )
        front = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(300):
            front = await client.batches.retrieve(front.id)
            if front.status == "completed":
                break
            await asyncio.sleep(0.1)
        assert front.status == "completed" and front.output_file_id, front
        output = (await client.files.content(front.output_file_id)).content.splitlines()
    assert sorted(orjson.loads(line)["custom_id"] for line in output) == sorted(
        f"r{i}" for i in range(JOBS)
    )

    for worker in workers:
        assert worker.process.poll() is None, worker.tail()
        assert worker.terminate() == 0, worker.tail()
        assert password not in worker.log.read_text(errors="replace")
    assert password not in (info.kafka.log.read_text(errors="replace"))


def _explicit(env: Env, password: str) -> dict[str, str]:
    """The environment of a command given every Kafka setting explicitly."""
    security = env.conn
    return env.environ(
        KAFKA_BOOTSTRAP_SERVERS=env.endpoints.bootstrap,
        PROMPTMILL_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        PROMPTMILL_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        PROMPTMILL_KAFKA_SASL_USERNAME=str(security.sasl_username),
        PROMPTMILL_KAFKA_SASL_PASSWORD=password,
        PROMPTMILL_KAFKA_SSL_CAFILE=str(security.ssl_cafile),
    )


def _cli(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptmill", *args],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _status_until_done(env: Env, batch: str, within: float = 20) -> str:
    """``promptmill status BATCH`` once the batch tracker has finished it (its done event)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        status = (await asyncio.to_thread(env.cli, "status", batch)).stdout
        if "finished    -" not in status or asyncio.get_running_loop().time() > deadline:
            assert "finished    -" not in status, status
            return status
        await asyncio.sleep(0.5)
