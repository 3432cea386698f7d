"""Model changes without redeploying: ``models push`` publishes a catalog revision on the
templates topic; running workers route by it within seconds (new weights, a deployment
removed), and a batch that pinned a revision keeps routing by it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptmill.dev.harness import Env, uncached_jobs
from promptmill.dev.processes import Started, stop
from promptmill.dev.stack import start_model_sim
from schemas import ChatMessage, Completion, PromptJob, encode

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[Started]]:
    started = [start_model_sim(tmp_path, name) for name in ("a", "b")]
    yield started
    for sim in started:
        stop(sim.pid, 10)


def _catalog(path: Path, sims: list[Started], weights: dict[str, int]) -> Path:
    rows = [
        f'      - {{name: {name}, base_url: "http://127.0.0.1:{sim.port}/v1", weight: {w}}}'
        for (name, w), sim in zip(weights.items(), sims, strict=False)
        if w
    ]
    path.write_text("groups:\n  promptmill-sim:\n    deployments:\n" + "\n".join(rows) + "\n")
    return path


async def _answered(env: Env, path: Path, **submit: bool) -> Counter[str | None]:
    records = await env.collect(await env.submit(path, **submit), within=60)
    assert all(isinstance(r, Completion) for r in records.values()), records
    return Counter(r.deployment for r in records.values() if isinstance(r, Completion))


async def _until_routed(env: Env, tmp_path: Path, name: str, wanted: set[str]) -> float:
    """Seconds until a small batch is routed to exactly the ``wanted`` deployments."""
    began = time.monotonic()
    for attempt in range(40):
        seen = await _answered(env, uncached_jobs(tmp_path, f"{name}{attempt}", 40))
        if set(seen) == wanted:
            return time.monotonic() - began
    raise AssertionError(f"still routed to {seen}, not {wanted}")


async def test_pushed_revisions_take_effect_live_and_a_pinned_batch_keeps_its_own(
    env: Env, tmp_path: Path, sims: list[Started]
) -> None:
    first = _catalog(tmp_path / "one.yaml", sims, {"a": 1, "b": 0})
    assert "published revision 1" in env.cli("models", "push", str(first)).stdout
    assert "unchanged (revision 1)" in env.cli("models", "push", str(first)).stdout
    worker = env.start_worker()  # no PROMPTMILL_MODEL_CATALOG: it follows the topic
    assert await _answered(env, uncached_jobs(tmp_path, "one", 100)) == {"a": 100}

    # new weights, and a deployment added: in force within 5 s, no restart
    second = _catalog(tmp_path / "two.yaml", sims, {"a": 1, "b": 3})
    assert "published revision 2" in env.cli("models", "push", str(second)).stdout
    assert await _until_routed(env, tmp_path, "two", {"a", "b"}) < 5
    mixed = await _answered(env, uncached_jobs(tmp_path, "mixed", 400))
    assert mixed == {"a": 100, "b": 300}  # 1:3, by smooth weighted round robin

    # a batch pinned to revision 2 while no worker runs; then a is removed
    worker.terminate()
    pinned = await env.submit(uncached_jobs(tmp_path, "pinned", 80), pin_models=True)
    third = _catalog(tmp_path / "three.yaml", sims, {"a": 0, "b": 1})
    assert "published revision 3" in env.cli("models", "push", str(third)).stdout
    env.start_worker()
    pinned_records = await env.collect(pinned, within=60)
    assert Counter(r.deployment for r in pinned_records.values() if isinstance(r, Completion)) == {
        "a": 20,
        "b": 60,
    }
    assert await _until_routed(env, tmp_path, "three", {"b"}) < 5
    listed = env.cli("models", "list")
    assert "revision 3 on the templates topic" in listed.stderr and " a " not in listed.stdout
    audit = env.cli("audit", "--format", "json").stdout
    assert audit.count('"catalog.pushed"') == 3


async def test_a_pinned_revision_the_topic_does_not_hold_is_one_dead_letter_per_job(
    env: Env,
) -> None:
    env.start_worker()
    job = PromptJob(
        job_id="pinned-99",
        batch_id="pinned",
        messages=[ChatMessage(role="user", content="x")],
        catalog_revision=99,
        cache=False,
    )
    await env.produce_jobs([(job.job_id, job.batch_id, encode(job))])
    (failure,) = (await env.collect("pinned", count=1)).values()
    assert not isinstance(failure, Completion)
    assert failure.code == "model_error" and "revision 99" in failure.message
