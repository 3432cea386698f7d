"""The limits, cache, batch-tracker and reporting tests, on a real 3-master Redis Cluster.

A single redis-server accepts a script whose keys live in different hash slots; a cluster
answers CROSSSLOT. Each test here runs the same scenario as its single-node twin (the
function is shared), with the workers and clients told ``PROMPTMILL_REDIS_CLUSTER=true``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from promptmill.dev.harness import Env
from tests.integration import (
    test_batches,
    test_limits,
    test_pipeline,
    test_reporting,
    test_tenancy,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _stop_workers(env: Env) -> None:
    """Between two scenarios that share an env: the next starts its own workers. None of
    them may have fallen back to working without Redis (a CROSSSLOT error would look like
    an unreachable Redis to the fleet state, which then holds limits locally)."""
    for worker in env.workers:
        worker.terminate(timeout=15)
        log = worker.log.read_text(errors="replace")
        assert "Redis unavailable" not in log and "CROSSSLOT" not in log, worker.tail(60)
    env.workers.clear()


async def test_limits_across_processes_on_a_cluster(cluster_env: Env) -> None:
    await test_limits.test_processes_acquiring_together_never_exceed_the_request_limit(cluster_env)
    await test_limits.test_true_up_corrects_estimates_and_tokens_stay_within_the_limit(cluster_env)
    for true_up in ("prompt", "usage"):
        await test_limits.test_true_up_setting_decides_what_a_call_is_charged(cluster_env, true_up)


async def test_cache_on_a_cluster(cluster_env: Env, tmp_path: Path) -> None:
    await test_pipeline.test_identical_concurrent_jobs_make_one_model_call(cluster_env, tmp_path)
    _stop_workers(cluster_env)
    await test_tenancy.test_another_tenant_never_gets_a_cached_answer(cluster_env, tmp_path)
    _stop_workers(cluster_env)


async def test_batch_tracker_on_a_cluster(cluster_env: Env, tmp_path: Path) -> None:
    await test_batches.test_done_event_and_status_count_each_job_once(cluster_env, tmp_path)
    _stop_workers(cluster_env)
    await test_batches.test_a_batch_id_is_taken_until_rerun_gives_it_a_new_run(
        cluster_env, tmp_path
    )
    _stop_workers(cluster_env)


async def test_reporting_on_a_cluster(cluster_env: Env, tmp_path: Path) -> None:
    await test_reporting.test_report_totals_survive_kill9_of_reporting_and_prompt_workers(
        cluster_env, tmp_path
    )
    _stop_workers(cluster_env)
