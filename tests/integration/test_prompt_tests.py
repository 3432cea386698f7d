"""``promptmill templates test`` through the real pipeline: cases as one batch, graded (the
simulator steered by its reply markers; embeddings and the judge from the simulator),
a table, JUnit XML and JSON, and exit codes 0, 1 and 2."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest

from promptmill.dev.harness import Env, sim_call

pytestmark = [pytest.mark.timeout(180)]

TEMPLATE = """\
name: greet
params: {temperature: 0, max_tokens: 16}
variables: [word]
messages:
  - role: user
    content: "Say {{ word }}. {{ steer | default('') }}"
"""

TESTS = """\
defaults:
  assert:
    - {type: cost, threshold: 0.01}
tests:
  - description: says hello
    vars: {word: hello, steer: "[[sim:reply=Hello there, friend]]"}
    assert:
      - {type: icontains, value: hello}
      - {type: similar, value: "hello there friend", threshold: 0.9}
      - {type: llm-rubric, value: "[[sim:reply=PASS it greets]] greets the reader"}
      - {type: python, value: checks.py:short}
  - description: says goodbye instead
    vars: {word: hello, steer: "[[sim:reply=Goodbye]]"}
    assert:
      - {type: contains, value: Hello}
      - {type: not-contains, value: Goodbye, weight: 2}
"""

CHECKS = """\
def short(output, context):
    return len(output) < 40 and context["vars"]["word"] == "hello"
"""


def _suite(tmp_path: Path, tests: str) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    (directory / "greet.yaml").write_text(TEMPLATE)
    (directory / "greet.tests.yaml").write_text(tests)
    (directory / "checks.py").write_text(CHECKS)
    return directory


async def test_cases_run_as_one_batch_and_a_failure_exits_1(env: Env, tmp_path: Path) -> None:
    directory = _suite(tmp_path, TESTS)
    junit, report = tmp_path / "junit.xml", tmp_path / "report.json"
    # no worker yet: nothing answers within the timeout, a distinct exit code
    stuck = env.cli("templates", "test", str(directory), "--timeout", "3", check=False)
    assert stuck.returncode == 2 and "could not run" in stuck.stdout, stuck.stdout

    env.start_worker()
    ran = env.cli(
        "templates",
        "test",
        str(directory),
        "--junit",
        str(junit),
        "--json",
        str(report),
        check=False,
    )
    assert ran.returncode == 1, ran.stdout + ran.stderr
    rows = ran.stdout.splitlines()
    assert rows[0].split()[:3] == ["case", "assertion", "result"]
    assert any("greet: says hello" in r and "PASS" in r for r in rows), ran.stdout
    assert any("similar" in r and "PASS" in r for r in rows)
    assert any("llm-rubric" in r and "PASS" in r and "judge: PASS" in r for r in rows)
    assert any("not-contains" in r and "FAIL" in r for r in rows)
    assert "1 of 2 case(s) passed" in rows[-1]

    suites = ET.fromstring(junit.read_bytes())
    assert (suites.get("tests"), suites.get("failures"), suites.get("errors")) == ("2", "1", "0")
    (suite,) = suites.findall("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases["says hello"].find("failure") is None
    failure = cases["says goodbye instead"].find("failure")
    assert failure is not None and "contains" in (failure.get("message") or "")

    data = orjson.loads(report.read_bytes())
    assert [c["passed"] for c in data["cases"]] == [True, False]
    assert data["cases"][0]["ref"] == "greet@1"  # the local file, published as version 1
    # cost passes (weight 1), contains fails (1), not-contains fails (2): 1 of 4
    assert data["cases"][1]["scores"] == [0.25]


async def test_all_passing_exits_0_and_repeat_reports_pass_rates(env: Env, tmp_path: Path) -> None:
    passing = TESTS.split("  - description: says goodbye")[0]
    directory = _suite(tmp_path, passing)
    env.start_worker()
    # the judge and embedding models named by the settings are the ones asked, on the wire
    judge, vectors = f"judge-{env.prefix}", f"vectors-{env.prefix}"
    ran = env.cli(
        "templates",
        "test",
        str(directory / "greet.tests.yaml"),
        "--repeat",
        "3",
        PROMPTMILL_EVALS_JUDGE_MODEL=judge,
        PROMPTMILL_EVALS_EMBEDDING_MODEL=vectors,
    )
    assert ran.returncode == 0
    assert "greet: says hello [3/3]" in ran.stdout
    asked = (await sim_call(env.endpoints.sim_url, "GET", "/sim/stats"))["models"]
    assert (asked.get(f"chat:{judge}"), asked.get(f"embeddings:{vectors}")) == (3, 3), asked
    # a ref that is not the local file: the version just published, by number
    again = env.cli("templates", "test", str(directory), "--ref", "@1")
    assert "1 of 1 case(s) passed" in again.stdout
    # a version 2 pushed, then the local file (version 1's content) tested again: it is
    # version 1 that runs, and no third version is published
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "greet.yaml").write_text(TEMPLATE.replace("Say {{ word }}.", "Please say {{ word }}."))
    assert "published version 2" in env.cli("templates", "push", str(newer)).stdout
    local = env.cli("templates", "test", str(directory), "--json", str(tmp_path / "r.json"))
    assert local.returncode == 0, local.stdout
    assert orjson.loads((tmp_path / "r.json").read_bytes())["cases"][0]["ref"] == "greet@1"
    [row] = [r for r in env.cli("templates", "list").stdout.splitlines() if r.startswith("greet")]
    assert row.split()[1] == "2", row  # the latest is still version 2


async def test_require_tests_refuses_to_move_a_label_to_a_failing_version(
    env: Env, tmp_path: Path
) -> None:
    directory = _suite(tmp_path, TESTS)  # one case fails
    env.start_worker()
    pushed = env.cli(
        "templates",
        "push",
        str(directory),
        "--label",
        "production",
        "--require-tests",
        check=False,
    )
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert "label production not moved: 1 case(s) failed: greet@1 'says goodbye instead'" in (
        pushed.stderr
    ), pushed.stderr
    assert "greet: published version 1" in pushed.stdout  # the version, not the label
    assert "production" not in env.cli("templates", "list").stdout

    moved = env.cli(
        "templates",
        "label",
        "greet",
        "production",
        "1",
        "--require-tests",
        str(directory),
        check=False,
    )
    assert moved.returncode == 1 and "not moved" in moved.stderr
    no_tests = tmp_path / "elsewhere"
    no_tests.mkdir()
    (no_tests / "other.tests.yaml").write_text(TESTS.replace("greet", "other"))
    (no_tests / "checks.py").write_text(CHECKS)
    refused = env.cli(
        "templates",
        "label",
        "greet",
        "production",
        "1",
        "--require-tests",
        str(no_tests),
        check=False,
    )
    assert refused.returncode == 1 and "no test file for greet" in refused.stderr

    # fixed: the failing case now expects what the template says
    (directory / "greet.tests.yaml").write_text(
        TESTS.replace("value: Hello}", "value: Goodbye}").replace(
            "not-contains, value: Goodbye", "not-contains, value: Hello"
        )
    )
    ok = env.cli("templates", "push", str(directory), "--label", "production", "--require-tests")
    assert "greet: label production -> version 1" in ok.stdout, ok.stdout
    assert "production=1" in env.cli("templates", "list").stdout
