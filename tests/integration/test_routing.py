"""Routing a model group over the catalog's deployments (three simulators): weights, and
failover from a deployment that is down, without losing a job."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptmill.dev.harness import Env, sim_call, write_jsonl
from promptmill.dev.processes import free_port, stop
from promptmill.dev.stack import start_model_sim
from schemas import Completion, Failure

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture
def second_sim(tmp_path: Path) -> Iterator[str]:
    """Another simulator of the test's own: its base URL."""
    started = start_model_sim(tmp_path, "second_sim")
    try:
        yield f"http://127.0.0.1:{started.port}/v1"
    finally:
        stop(started.pid, 10)


def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


def _catalog(tmp_path: Path, deployments: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(f"groups:\n  promptmill-sim:\n    deployments:\n{deployments}")
    return path


async def test_weights_and_failover_from_a_deployment_that_is_down(
    env: Env, tmp_path: Path, second_sim: str
) -> None:
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: a, base_url: "{env.endpoints.sim_url}", weight: 1}}
      - {{name: b, base_url: "{second_sim}", weight: 3}}
      - {{name: down, base_url: "{_dead_url()}", weight: 2, timeout_seconds: 5}}
""",
    )
    count = 600
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"messages": [{"role": "user", "content": f"r{i}"}], "cache": False}
            for i in range(count)
        ],
    )
    env.start_worker(
        PROMPTMILL_MODEL_CATALOG=str(catalog), PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS="0.05"
    )
    records = await env.collect(await env.submit(jobs), within=180)

    assert len(records) == count and all(isinstance(r, Completion) for r in records.values())
    done = [r for r in records.values() if isinstance(r, Completion)]
    answered = Counter(r.deployment for r in done)
    moved = [r for r in done if r.fallbacks]
    # first choices by weight 1:3:2; "down"'s third moves on to a or b by 1:3 again
    assert set(answered) == {"a", "b"}
    assert all(r.fallbacks == ["down"] for r in moved)
    assert abs(len(moved) - count / 3) <= 45, len(moved)  # ~4 standard deviations
    assert abs(answered["a"] - count / 4) <= 45, answered
    # every answer came from the simulator it names, once
    first = await sim_call(env.endpoints.sim_url, "GET", "/sim/stats")
    second = await sim_call(second_sim, "GET", "/sim/stats")
    assert (first["chat_completions"], second["chat_completions"]) == (answered["a"], answered["b"])


async def test_a_group_with_every_deployment_down_fails_each_job_once(
    env: Env, tmp_path: Path
) -> None:
    catalog = _catalog(
        tmp_path,
        f"""\
      - {{name: one, base_url: "{_dead_url()}", timeout_seconds: 5}}
      - {{name: two, base_url: "{_dead_url()}", timeout_seconds: 5}}
""",
    )
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [{"messages": [{"role": "user", "content": f"x{i}"}], "cache": False} for i in range(3)],
    )
    env.start_worker(
        PROMPTMILL_MODEL_CATALOG=str(catalog),
        PROMPTMILL_MODEL_BACKOFF_BASE_SECONDS="0.05",
        PROMPTMILL_MODEL_MAX_ATTEMPTS="2",
    )
    records = await env.collect(await env.submit(jobs), within=120)
    assert len(records) == 3
    for failure in records.values():
        assert isinstance(failure, Failure) and failure.code == "model_error"
        assert "failed)" in failure.message, failure.message  # the last error, and who else
