"""The front door's trust boundary: keys, roles, tenants, budgets, cancellation and the
audit trail, attacked through HTTP as a client would."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from promptmill.dev.harness import Env, sim_call, write_jsonl
from promptmill.dev.secure import generate
from tests.integration.test_serve import Service, create_batch, lines_of, request_line

pytestmark = [pytest.mark.timeout(240)]
PRICES = orjson.dumps({"*": {"prompt_per_1m": 100.0, "completion_per_1m": 100.0}}).decode()


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, key: str | None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.request(method, url, headers=headers, **kwargs) as response:
        body = await response.read()
        return response.status, orjson.loads(body) if body.startswith(b"{") else {}


async def test_keys_roles_and_tenants_hold_on_every_endpoint(env: Env, tmp_path: Path) -> None:
    service = Service(env)
    await service.ready()
    acme = env.api_key("acme", "submitter")
    acme_reader = env.api_key("acme", "reader")
    other = env.api_key("globex", "submitter")
    admin = env.api_key("ops", "admin")
    path = write_jsonl(tmp_path / "b.jsonl", [request_line(i) for i in range(3)])
    async with service.client(acme) as client:
        batch = await create_batch(client, path)
        await service.finished(client, batch.id)
    base = service.base_url
    file_id = batch.input_file_id
    routes = [
        ("POST", "/files"),
        ("GET", "/files"),
        ("GET", f"/files/{file_id}"),
        ("GET", f"/files/{file_id}/content"),
        ("DELETE", f"/files/{file_id}"),
        ("POST", "/batches"),
        ("GET", "/batches"),
        ("GET", f"/batches/{batch.id}"),
        ("POST", f"/batches/{batch.id}/cancel"),
        ("GET", f"/batches/{batch.id}/results"),
    ]
    async with aiohttp.ClientSession() as http:
        for method, route in routes:  # no key, a made-up key: 401 with OpenAI's shape
            for key in (None, "pm-not-a-real-key"):
                status, body = await _call(http, method, base + route, key)
                assert status == 401, (method, route, key, status)
                assert body["error"]["code"] in ("missing_api_key", "invalid_api_key")
        for method, route in routes[2:5] + routes[7:]:  # another tenant's ids: 404, not 403
            status, body = await _call(http, method, base + route, other)
            assert status == 404, (method, route, status)
            assert body["error"]["code"] == "not_found"
        status, listed = await _call(http, "GET", base + "/batches", other)
        assert status == 200 and listed["data"] == []
        for method, route in [routes[0], routes[4], routes[5], routes[8]]:  # reader: 403
            status, body = await _call(http, method, base + route, acme_reader, json={})
            assert status == 403, (method, route, status)
        for method, route in [routes[2], routes[7]]:  # reader reads; admin sees every tenant
            assert (await _call(http, method, base + route, acme_reader))[0] == 200
            assert (await _call(http, method, base + route, admin))[0] == 200
        # guessing: a well-formed id that was never issued is just as absent
        status, _ = await _call(http, "GET", base + "/batches/batch_" + "0" * 32, acme)
        assert status == 404
        # a revoked key stops working within 5 s
        key_id = env.cli("keys", "list", "--tenant", "acme").stdout.splitlines()[1].split()[0]
        env.cli("keys", "revoke", key_id)
        revoked_at = time.monotonic()
        while (await _call(http, "GET", base + "/batches", acme))[0] != 401:
            assert time.monotonic() - revoked_at < 5, "a revoked key still works after 5 s"
            await asyncio.sleep(0.1)
    for process in service.processes:
        assert process.process.poll() is None, process.tail()


async def test_a_tenants_cache_never_answers_another_tenant(env: Env, tmp_path: Path) -> None:
    service = Service(env)
    await service.ready()
    path = write_jsonl(tmp_path / "same.jsonl", [request_line(i, temperature=0) for i in range(10)])
    sim = env.endpoints.sim_url
    cached = {}
    for tenant in ("acme", "globex", "acme"):
        async with service.client(env.api_key(tenant, "submitter")) as client:
            before = (await sim_call(sim, "GET", "/sim/stats"))["chat_completions"]
            done = await service.finished(client, (await create_batch(client, path)).id)
            calls = (await sim_call(sim, "GET", "/sim/stats"))["chat_completions"] - before
            cached[tenant] = (done.model_extra or {}).get("cached"), calls
    assert cached["globex"] == (0, 10)  # acme's answers were cached, and not given to globex
    assert cached["acme"] == (10, 0)  # acme's second batch: all from its own cache


async def test_budget_exhausted_mid_batch_fails_the_rest_as_budget_exceeded(
    env: Env, tmp_path: Path
) -> None:
    service = Service(env, PROMPTMILL_MODEL_PRICES=PRICES)
    await service.ready()
    env.cli("tenants", "set", "thrifty", "--budget-usd", "0.03", "--budget-period", "day")
    rows = [request_line(i, max_tokens=16) for i in range(40)]
    path = write_jsonl(tmp_path / "b.jsonl", rows)
    async with service.client(env.api_key("thrifty", "submitter")) as client:
        done = await service.finished(client, (await create_batch(client, path)).id)
        errors = lines_of((await client.files.content(done.error_file_id)).content)
    extra = done.model_extra or {}
    counts = done.request_counts
    assert counts is not None and 0 < counts.completed < 40
    assert extra["failed_by_code"] == {"budget_exceeded": 40 - counts.completed}
    assert {e["error"]["code"] for e in errors} == {"budget_exceeded"}
    (use,) = extra["budgets"]
    assert use["scope"] == "tenant" and use["limit_usd"] == 0.03
    assert 0 < use["spent_usd"] <= 0.03  # reserved atomically: never over
    assert abs(use["spent_usd"] - extra["cost_usd"]) < 1e-6  # trued up to the real cost
    status = env.cli("tenants", "show").stdout
    assert "thrifty" in status and "of $0.03 per day" in status
    batch_status = env.cli("status", done.id).stdout
    assert "budget      tenant $0.0" in batch_status and "of $0.03 per day" in batch_status
    # a key's own budget binds too, below its tenant's (which has none here)
    async with service.client(env.api_key("free", "submitter", budget_usd="0.01")) as client:
        done = await service.finished(client, (await create_batch(client, path)).id)
    assert (done.model_extra or {})["failed_by_code"]["budget_exceeded"] > 20


async def test_cancel_mid_batch_skips_the_jobs_not_yet_run(env: Env, tmp_path: Path) -> None:
    sim = env.endpoints.sim_url
    await sim_call(sim, "POST", "/sim/config", {"latency_ms": 150, "jitter_ms": 0})
    service = Service(env, PROMPTMILL_WORKER_CONCURRENCY="4")
    await service.ready()
    key = env.api_key("acme", "submitter")
    path = write_jsonl(tmp_path / "b.jsonl", [request_line(i) for i in range(300)])
    async with service.client(key) as client:
        batch = await create_batch(client, path)
        await service.until_completed(client, batch.id, 12)
        cancelling = await client.batches.cancel(batch.id)
        assert cancelling.status == "cancelling" and cancelling.cancelling_at
        done = await service.finished(client, batch.id)
        output = lines_of((await client.files.content(done.output_file_id)).content)
        errors = lines_of((await client.files.content(done.error_file_id)).content)
    assert done.status == "cancelled" and done.cancelled_at
    calls = (await sim_call(sim, "GET", "/sim/stats"))["chat_completions"]
    assert calls == len(output) < 60  # the rest never reached the model
    assert {e["error"]["code"] for e in errors} == {"cancelled"}
    ids = sorted(line["custom_id"] for line in output + errors)
    assert ids == sorted(f"req-{i}" for i in range(300))  # every request once
    trail = env.cli("audit", "--format", "json").stdout.splitlines()
    cancels = [e for e in map(orjson.loads, trail) if e["action"] == "batch.cancelled"]
    assert [(c["target"], c["details"]["status"]) for c in cancels] == [(batch.id, "in_progress")]


async def test_every_audited_action_is_on_the_trail(env: Env, tmp_path: Path) -> None:
    env.extra["PROMPTMILL_OPERATOR"] = "alice@ops"
    service = Service(env)
    await service.ready()
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "hello.yaml").write_text(
        "name: hello\nmessages:\n  - role: user\n    content: 'hi {{ who }}'\n"
    )
    env.cli("templates", "push", str(templates), "--label", "production")
    (templates / "hello.yaml").write_text(
        "name: hello\nmessages:\n  - role: user\n    content: 'hello {{ who }}'\n"
    )
    env.cli("templates", "push", str(templates))
    env.cli("templates", "label", "hello", "production", "2")
    key = env.api_key("acme", "submitter")
    path = write_jsonl(tmp_path / "b.jsonl", [request_line(i) for i in range(3)])
    async with service.client(key) as client:
        batch = await create_batch(client, path)
        with contextlib.suppress(openai.ConflictError):  # it may finish first (not audited)
            await client.batches.cancel(batch.id)
        await service.finished(client, batch.id)
        await client.files.delete(batch.input_file_id)
    key_id = env.cli("keys", "list").stdout.splitlines()[1].split()[0]
    env.cli("keys", "revoke", key_id)
    trail = [
        orjson.loads(line) for line in env.cli("audit", "--format", "json").stdout.splitlines()
    ]
    actions = [e["action"] for e in trail]
    for action in ("key.created", "key.revoked", "template.pushed", "label.moved",
                   "batch.created", "file.deleted"):  # fmt: skip
        assert action in actions, (action, actions)
    moved = [e for e in trail if e["action"] == "label.moved"]
    assert [(m["details"]["from_version"], m["details"]["to_version"]) for m in moved] == [
        (None, 1),
        (1, 2),
    ]
    assert all(m["actor"]["operator"] == "alice@ops" for m in moved)
    created = next(e for e in trail if e["action"] == "batch.created")
    assert created["actor"]["key_id"] == key_id and created["tenant"] == "acme"
    assert created["actor"]["role"] == "submitter" and created["target"] == batch.id
    table = env.cli("audit", "--tenant", "acme").stdout
    assert batch.id in table and "hello" not in table  # a tenant's view: its own objects


async def test_a_tenant_quota_set_at_run_time_paces_that_tenant_only(
    env: Env, tmp_path: Path
) -> None:
    service = Service(env)
    await service.ready()
    env.cli("tenants", "set", "slow", "--rpm", "60")  # one a second, fleet-wide
    path = write_jsonl(tmp_path / "b.jsonl", [request_line(i) for i in range(8)])
    took = {}
    for tenant in ("slow", "fast"):
        async with service.client(env.api_key(tenant, "submitter")) as client:
            started = time.monotonic()
            done = await service.finished(client, (await create_batch(client, path)).id)
            took[tenant] = time.monotonic() - started
            assert done.status == "completed"
    assert took["slow"] > 5.5, took  # 8 requests at 60 RPM (a burst of 1): >= 7 s apart
    assert took["fast"] < 5, took


async def test_https_expiry_allow_list_openapi_and_metrics(env: Env, tmp_path: Path) -> None:
    material = generate(tmp_path / "tls")  # a CA and a certificate for localhost/127.0.0.1
    tls = {
        "PROMPTMILL_SERVE_TLS_CERT": str(material.keystore),
        "PROMPTMILL_SERVE_TLS_KEY": str(material.keystore),
    }
    service = Service(env, **tls)
    base = service.base_url.replace("http://", "https://")
    context = ssl.create_default_context(cafile=str(material.ca_file))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base.removesuffix("/v1") + "/readyz") as response:
                    if response.status == 200:
                        break
            await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
            async with http.get(service.base_url.removesuffix("/v1") + "/healthz"):
                pass
        async with http.get(base.removesuffix("/v1") + "/openapi.json") as response:
            document = orjson.loads(await response.read())
        assert document["openapi"].startswith("3.1")
        assert {
            "/v1/files",
            "/v1/batches/{batch_id}/cancel",
            "/v1/batches/{batch_id}/results",
        } <= set(document["paths"])
        assert "BatchObject" in document["components"]["schemas"]
        short = env.api_key("acme", "submitter", expires_days="0.00003")  # ~2.6 s
        assert (await _call(http, "GET", base + "/batches", short))[0] == 200
        await asyncio.sleep(3)
        assert (await _call(http, "GET", base + "/batches", short))[0] == 401
    limited = env.api_key("acme", "submitter", model="promptmill-sim")
    other_model = request_line(1)
    other_model["body"]["model"] = "gpt-4o"
    rows = [request_line(0), other_model]
    path = write_jsonl(tmp_path / "models.jsonl", rows)
    http_client = openai.DefaultAsyncHttpxClient(
        verify=ssl.create_default_context(cafile=str(material.ca_file))
    )
    async with openai.AsyncOpenAI(
        api_key=limited, base_url=base, max_retries=0, http_client=http_client
    ) as client:
        done = await service.finished(client, (await create_batch(client, path)).id)
    assert done.status == "failed" and done.errors is not None and done.errors.data is not None
    assert [(e.line, e.code) for e in done.errors.data] == [(2, "model_not_allowed")]
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http,
        http.get(base.removesuffix("/v1") + "/metrics") as response,
    ):
        metrics = await response.text()
    assert 'promptmill_serve_requests_total{route="/v1/files",status="200"}' in metrics
    assert 'promptmill_serve_batches_total{outcome="failed"} 1' in metrics
    assert "promptmill_serve_upload_bytes_total" in metrics
