"""Canary labels through the pipeline: ``templates label NAME production 1 --canary 2:10%``
sends 10% of the jobs that resolve ``production`` to version 2, decided at submit from each
job's run-independent id (a rerun of the batch draws the same); promote and rollback end it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from promptmill.dev.harness import Env, write_jsonl
from schemas import Completion

pytestmark = [pytest.mark.timeout(300)]

TEMPLATE = """\
name: echo
params: {{temperature: 0, max_tokens: 8}}
variables: [n]
messages:
  - role: user
    content: "{text} {{{{ n }}}}"
"""


def _push(env: Env, tmp_path: Path, text: str) -> None:
    directory = tmp_path / text
    directory.mkdir()
    (directory / "echo.yaml").write_text(TEMPLATE.format(text=text))
    env.cli("templates", "push", str(directory))


async def test_a_canary_gets_its_share_the_same_jobs_again_and_ends(
    env: Env, tmp_path: Path
) -> None:
    _push(env, tmp_path, "first")  # version 1
    _push(env, tmp_path, "second")  # version 2
    env.cli("templates", "label", "echo", "production", "1", "--canary", "2:10%")
    listed = env.cli("templates", "list").stdout
    assert "production=1 (canary 2 at 10%)" in listed, listed
    env.start_worker(PROMPTMILL_WORKER_CONCURRENCY="256")
    count = 5000
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"template": "echo@production", "variables": {"n": i}, "custom_id": f"j{i}"}
            for i in range(count)
        ],
    )

    async def versions(**submit: object) -> dict[str | None, int | None]:
        batch = await env.submit(jobs, batch_id="canary", **submit)
        records = await env.collect(batch, within=240)
        assert len(records) == count
        return {
            r.custom_id: r.template_version for r in records.values() if isinstance(r, Completion)
        }

    first = await versions()
    share = Counter(first.values())[2] / count
    assert 0.07 <= share <= 0.13, share  # 10% within 3 points
    assert set(first.values()) == {1, 2}
    again = await versions(rerun=True)  # run 2 of the same batch: other job ids, same draws
    assert again == first

    promoted = env.cli("templates", "promote", "echo", "production")
    assert "label production -> version 2 (canary promoted)" in promoted.stdout
    assert "production=2" in env.cli("templates", "list").stdout
    env.cli("templates", "label", "echo", "production", "1", "--canary", "2:50%")
    rolled = env.cli("templates", "rollback", "echo", "production")
    assert "stays at version 1 (canary stopped)" in rolled.stdout
    nothing = env.cli("templates", "rollback", "echo", "production", check=False)
    assert nothing.returncode == 1 and "has no canary" in nothing.stderr
