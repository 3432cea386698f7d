"""``promptmill eval``: two versions of a template over one dataset, through the workers,
with a known difference in pass rate (the simulator steered by reply markers)."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptmill.dev.harness import Env, write_jsonl
from tests.integration.steered import say_version

pytestmark = [pytest.mark.timeout(240)]


def _push(env: Env, tmp_path: Path, version: str, reply: str) -> None:
    env.cli("templates", "push", str(say_version(tmp_path / version, reply)))


async def test_eval_compares_two_versions_and_its_exit_code_gates(env: Env, tmp_path: Path) -> None:
    _push(env, tmp_path, "v1", "nope")  # version 1 never says the word
    _push(env, tmp_path, "v2", "I say {{ word }}")  # version 2 always does
    rows: list[dict[str, object]] = [
        {"vars": {"word": f"w{i}"}, "assert": [{"type": "icontains", "value": f"w{i}"}]}
        for i in range(9)
    ]
    rows.append({"vars": {"word": "w9"}, "expected": "I say w9", "description": "close to it"})
    dataset = write_jsonl(tmp_path / "dataset.jsonl", rows)
    env.start_worker()
    report = tmp_path / "eval.html"

    better = env.cli("eval", "say@1", "say@2", "--dataset", str(dataset), "--html", str(report))
    lines = better.stdout.splitlines()
    passed = next(line for line in lines if line.startswith("cases passed"))
    assert "0% (0/10)" in passed and "100% (10/10)" in passed, better.stdout
    assert any(line.strip().startswith("icontains") for line in lines)
    assert "rows where they differ: 10" in better.stdout
    assert "candidate is no worse than the baseline" in better.stdout
    page = report.read_text()
    assert page.startswith("<!doctype html>") and "class='differs'" in page and "I say w3" in page

    worse = env.cli("eval", "say@2", "say@1", "--dataset", str(dataset), check=False)
    assert worse.returncode == 1 and "WORSE than" in worse.stdout
    allowed = env.cli("eval", "say@2", "say@1", "--dataset", str(dataset), "--margin", "1")
    assert allowed.returncode == 0
    same_model = env.cli("eval", "say@2", "say@2#promptmill-sim", "--dataset", str(dataset))
    assert "rows where they differ: 0" in same_model.stdout

    bad = env.cli("eval", "say", "say@2", "--dataset", str(dataset), check=False)
    assert bad.returncode == 2 and "give a version or a label" in bad.stdout
    unknown = env.cli("eval", "say@7", "say@2", "--dataset", str(dataset), check=False)
    assert unknown.returncode == 2 and "has no version 7" in unknown.stdout, unknown.stdout
    (tmp_path / "broken.jsonl").write_text('{"vars": {}}\n{"vars": {}, "bogus": 1}\n')
    broken = env.cli(
        "eval", "say@1", "say@2", "--dataset", str(tmp_path / "broken.jsonl"), check=False
    )
    assert broken.returncode == 2 and "broken.jsonl:1: no assertion" in broken.stdout
