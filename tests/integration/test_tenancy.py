"""Tenants never see each other: the response cache is scoped to the tenant."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptmill.dev.harness import Env, sim_call, write_jsonl
from schemas import Completion

TEMPLATES = Path(__file__).parent / "templates"
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def _ask(env: Env, tmp_path: Path, tenant: str, who: str) -> Completion:
    jobs = write_jsonl(
        tmp_path / f"{tenant}.jsonl", [{"template": "greet", "variables": {"who": who}}]
    )
    batch = await env.submit(jobs, tenant=tenant)
    (record,) = (await env.collect(batch)).values()
    assert isinstance(record, Completion), record
    return record


async def _model_calls(env: Env) -> int:
    stats = await sim_call(env.endpoints.sim_url, "GET", "/sim/stats")
    return int(stats["chat_completions"])


async def test_another_tenant_never_gets_a_cached_answer(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    env.start_worker()
    who = f"secret {env.prefix}"
    before = await _model_calls(env)
    acme = await _ask(env, tmp_path, "acme", who)
    globex = await _ask(env, tmp_path, "globex", who)
    again = await _ask(env, tmp_path, "acme", who)
    assert not acme.cached and not globex.cached  # globex does not learn acme asked it
    assert again.cached and again.tenant == "acme"
    assert await _model_calls(env) - before == 2


async def test_cross_tenant_sharing_is_an_explicit_opt_in(env: Env, tmp_path: Path) -> None:
    await env.push_templates(TEMPLATES)
    env.start_worker(PROMPTMILL_CACHE_SHARED_ACROSS_TENANTS="true")
    who = f"shared {env.prefix}"
    before = await _model_calls(env)
    acme = await _ask(env, tmp_path, "acme", who)
    globex = await _ask(env, tmp_path, "globex", who)
    assert not acme.cached and globex.cached and globex.text == acme.text
    assert await _model_calls(env) - before == 1
