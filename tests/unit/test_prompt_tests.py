"""Template test files and their assertions: every type passing and failing, negation,
weights and thresholds, python checks under a time limit, and file errors at their line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processors.assertions import (
    AssertionUnavailable,
    NoJudge,
    Observed,
    cosine,
    grade,
    grade_case,
    run_python,
)
from producers.templates import load_template_dir
from promptmill.commands.prompt_tests import _files
from schemas import PromptmillError
from schemas.prompt_tests import Assertion, TestCase, find_test_files, load_test_file
from schemas.yaml_files import YamlFileError

SEEN = Observed(
    output='Verdict: positive. {"label": "positive", "score": 0.9}',
    vars={"review": "love it"},
    prompt_tokens=20,
    completion_tokens=12,
    cost_usd=0.0004,
    latency_ms=350.0,
)
LABEL_SCHEMA = {
    "type": "object",
    "required": ["label"],
    "properties": {"label": {"enum": ["positive", "negative", "neutral"]}},
}


class StandInJudge:
    """Similarity by shared words; the rubric passes when its text names a word of the output."""

    async def similarity(self, output: str, expected: str) -> float:
        a, b = set(output.lower().split()), set(expected.lower().split())
        return len(a & b) / len(a | b) if a | b else 0.0

    async def rubric(self, output: str, rubric: str, vars: dict[str, Any]) -> tuple[bool, str]:
        hit = any(word in output.lower() for word in rubric.lower().split())
        return hit, "mentions it" if hit else "does not mention it"


def _a(type_: str, value: Any = None, **more: Any) -> Assertion:
    return Assertion(type=type_, value=value, **more)


CASES = [
    # (assertion, passes on SEEN)
    (_a("equals", SEEN.output), True),
    (_a("equals", "positive"), False),
    (_a("contains", "positive"), True),
    (_a("contains", "Positive"), False),
    (_a("icontains", "POSITIVE"), True),
    (_a("icontains", "negative"), False),
    (_a("contains-any", ["negative", "score"]), True),
    (_a("contains-any", ["negative", "neutral"]), False),
    (_a("contains-all", ["Verdict", "label"]), True),
    (_a("contains-all", ["Verdict", "neutral"]), False),
    (_a("icontains-any", ["NEGATIVE", "VERDICT"]), True),
    (_a("icontains-any", ["NEGATIVE", "NEUTRAL"]), False),
    (_a("icontains-all", ["VERDICT", "LABEL"]), True),
    (_a("icontains-all", ["VERDICT", "NEUTRAL"]), False),
    (_a("starts-with", "Verdict:"), True),
    (_a("starts-with", "positive"), False),
    (_a("regex", r"score\": 0\.\d"), True),
    (_a("regex", r"^\{"), False),
    (_a("is-json"), False),
    (_a("contains-json"), True),
    (_a("contains-json", LABEL_SCHEMA), True),
    (_a("contains-json", {"type": "object", "required": ["reason"]}), False),
    (_a("cost", threshold=0.001), True),
    (_a("cost", threshold=0.0001), False),
    (_a("latency", threshold=500), True),
    (_a("latency", threshold=100), False),
    (_a("similar", "verdict: positive.", threshold=0.2), True),
    (_a("similar", "something else entirely", threshold=0.2), False),
    (_a("llm-rubric", "is it positive?"), True),
    (_a("llm-rubric", "mentions shipping"), False),
]


@pytest.mark.parametrize(("assertion", "passes"), CASES, ids=[c[0].type for c in CASES])
async def test_each_type_passes_and_fails_and_not_inverts_it(
    assertion: Assertion, passes: bool
) -> None:
    judge = StandInJudge()
    graded = await grade(assertion, SEEN, judge)
    assert graded.passed is passes, graded.reason
    assert graded.reason  # always says what it checked
    negated = assertion.model_copy(update={"type": f"not-{assertion.type}"})
    inverse = await grade(negated, SEEN, judge)
    assert inverse.passed is (not passes) and inverse.score == pytest.approx(1 - graded.score)
    assert "not (" in inverse.reason and inverse.reason.startswith("expected: ") is passes


async def test_is_json_with_and_without_a_schema() -> None:
    seen = Observed(output='{"label": "neutral"}')
    assert (await grade(_a("is-json"), seen, NoJudge())).passed
    assert (await grade(_a("is-json", LABEL_SCHEMA), seen, NoJudge())).passed
    wrong = await grade(_a("is-json", LABEL_SCHEMA), Observed('{"label": "meh"}'), NoJudge())
    assert not wrong.passed and "at label" in wrong.reason


async def test_without_a_judge_model_backed_assertions_fail_saying_why() -> None:
    graded = await grade(_a("similar", "x"), SEEN, NoJudge())
    assert not graded.passed and "embeddings" in graded.reason


async def test_weights_and_the_case_threshold() -> None:
    case = TestCase(
        vars={},
        assertions=[
            _a("contains", "positive", weight=3),
            _a("contains", "missing", weight=1),
            _a("contains", "absent", weight=0),  # informational: never fails the case
        ],
    )
    strict = await grade_case(case, SEEN, NoJudge())
    assert not strict.passed and strict.score == pytest.approx(0.75)
    lenient = await grade_case(case.model_copy(update={"threshold": 0.7}), SEEN, NoJudge())
    assert lenient.passed
    too_high = await grade_case(case.model_copy(update={"threshold": 0.8}), SEEN, NoJudge())
    assert not too_high.passed
    informational = TestCase(
        vars={}, assertions=[_a("contains", "positive"), _a("contains", "absent", weight=0)]
    )
    assert (await grade_case(informational, SEEN, NoJudge())).passed


async def test_python_checks_run_in_a_child_with_a_time_limit(tmp_path: Path) -> None:
    checks = tmp_path / "checks.py"
    checks.write_text(
        "def short(output, context):\n"
        "    return {'pass': len(output) < 100, 'score': 0.9, 'reason': f'{len(output)} chars'}\n"
        "def uses_vars(output, context):\n"
        "    return context['vars']['review'] in output\n"
        "def loops(output, context):\n"
        "    while True: pass\n"
        "def breaks(output, context):\n"
        "    raise ValueError('no')\n"
    )
    passed, score, reason = await run_python(checks, "short", SEEN)
    assert passed and score == 0.9 and reason == "54 chars"
    assert (await run_python(checks, "uses_vars", SEEN))[0] is False
    with pytest.raises(AssertionUnavailable, match="did not finish within 1 s"):
        await run_python(checks, "loops", SEEN, limit=1.0)
    broken = await grade(
        _a("python", "checks.py:breaks"), SEEN, NoJudge(), lambda a: (checks, "breaks")
    )
    assert not broken.passed and "raised: ValueError: no" in broken.reason


def test_cosine() -> None:
    assert cosine([1, 0], [1, 0]) == 1 and cosine([1, 0], [0, 1]) == 0
    assert cosine([0, 0], [1, 1]) == 0


GOOD = """\
defaults:
  vars: {product: lamp}
  assert:
    - {type: cost, threshold: 0.01}
tests:
  - description: happy
    vars: {review: "Love it"}
    assert:
      - {type: icontains, value: positive, online: true}
  - vars: {review: "Meh", product: chair}
    threshold: 0.5
    assert:
      - {type: not-regex, value: "^positive"}
"""


def test_a_test_file_with_defaults_merged(tmp_path: Path) -> None:
    path = tmp_path / "classify.tests.yaml"
    path.write_text(GOOD)
    loaded = load_test_file(path)
    assert loaded.template == "classify" and loaded.lines == [6, 10]
    first, second = loaded.cases
    assert first.vars == {"product": "lamp", "review": "Love it"}
    assert [a.type for a in first.assertions] == ["cost", "icontains"]
    assert first.assertions[1].online and first.threshold is None
    assert second.vars["product"] == "chair" and second.threshold == 0.5
    assert find_test_files(tmp_path) == [path]


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        (GOOD.replace("icontains", "includes"), 9, "tests.0.assert.0", "unknown assertion type"),
        (GOOD.replace('"^positive"', '"(unclosed"'), 13, "tests.1.assert.0", "does not compile"),
        (
            GOOD.replace("{type: cost, threshold: 0.01}", "{type: cost}"),
            4,
            "defaults.assert.0",
            "needs a threshold",
        ),
        (
            GOOD.replace(
                "{type: icontains, value: positive, online: true}",
                "{type: contains-json, value: {type: 12}}",
            ),
            9,
            "tests.0.assert.0",
            "not a valid JSON Schema",
        ),
        (
            GOOD.replace(
                "{type: icontains, value: positive, online: true}",
                "{type: python, value: gone.py:f}",
            ),
            9,
            "tests.0.assert.0.value",
            "no such file",
        ),
        (
            GOOD.replace("    threshold: 0.5\n", "    threshold: 5\n"),
            11,
            "tests.1.threshold",
            "less than or equal to 1",
        ),
        ("tests:\n  - vars: {}\n", 2, "tests.0", "a case with no assert"),
        (
            GOOD.replace(
                "{type: icontains, value: positive, online: true}",
                "{type: python, value: checks.py, online: true}",
            ),
            9,
            "tests.0.assert.0.online",
            "cannot run online",
        ),
    ],
)
def test_an_error_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, words: str
) -> None:
    path = tmp_path / "classify.tests.yaml"
    path.write_text(text)
    with pytest.raises(YamlFileError) as caught:
        load_test_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: field {field}: "), message
    assert words in message and "\n" not in message


def test_the_example_test_files_load_and_are_not_templates() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "templates"
    names = {item.body.name for item in load_template_dir(examples)}
    found = find_test_files(examples)
    assert found and all(load_test_file(path).template in names for path in found)


def test_the_example_ci_workflow_only_uses_commands_that_exist() -> None:
    import shlex

    import yaml

    from promptmill.cli import build_parser

    workflow = Path(__file__).resolve().parents[2] / "examples" / "ci" / "prompt-tests.yml"
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    commands = [
        part.strip().removeprefix("nohup ").split(">")[0]
        for job in jobs.values()
        for step in job["steps"]
        for part in str(step.get("run", "")).split("&&")
        if part.strip().removeprefix("nohup ").startswith("promptmill ")
    ]
    assert any("--require-tests" in c for c in commands) and any(" test " in c for c in commands)
    for command in commands:
        build_parser().parse_args(shlex.split(command)[1:])  # exits on an unknown flag


def test_templates_test_finds_a_test_file_by_template_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "classify.tests.yaml").write_text(GOOD)
    monkeypatch.chdir(tmp_path)
    [loaded] = _files(Path("classify"))
    assert loaded.path == tmp_path / "a" / "classify.tests.yaml"
    with pytest.raises(PromptmillError, match=r"no classify2\.tests\.yaml below"):
        _files(Path("classify2"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "classify.tests.yaml").write_text(GOOD)
    with pytest.raises(PromptmillError, match=r"2 files named classify\.tests\.yaml"):
        _files(Path("classify"))
