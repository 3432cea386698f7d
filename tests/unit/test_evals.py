"""Online checks: what a test file marks online, the record on the templates topic, the
evals processor's sampling and verdict, the pass-rate alert, the regex time limit, and the
eval columns of reports."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from processors.assertions import AssertionUnavailable, NoJudge, Observed, RegexSandbox, grade
from processors.evals import EvalsConfig, EvalsProcessor, PassRateWatch
from processors.fleet import FleetState, LimitTable
from processors.fleet.state import FleetConfig
from processors.model import ModelClient
from processors.runtime import InRecord
from producers.reports import group_reports, render
from promptmill.settings import Settings
from promptmill.wiring import judge_for
from schemas import Completion, Failure, Stage, WindowReport, decode, encode
from schemas.evals import EvalScore, OnlineChecks
from schemas.prompt_tests import Assertion, load_test_file
from topics import TopicCatalog
from topics.metrics import Registry
from topics.templates import TemplateStore

FILE = """\
defaults:
  threshold: 0.5
  assert:
    - {type: is-json, online: true}
    - {type: cost, threshold: 0.01}
tests:
  - vars: {review: "Love it"}
    assert:
      - {type: icontains, value: positive, online: true}
      - {type: llm-rubric, value: "is kind", online: true}
  - vars: {review: "Meh"}
    assert:
      - {type: icontains, value: positive, online: true}
"""


def _checks(assertions: list[Assertion], threshold: float | None = None) -> OnlineChecks:
    return OnlineChecks(
        name="classify",
        assertions=assertions,
        threshold=threshold,
        origin="classify.tests.yaml",
        content_hash=OnlineChecks.hash_of(assertions, threshold),
    )


def test_the_online_assertions_of_a_test_file_each_once(tmp_path: Path) -> None:
    path = tmp_path / "classify.tests.yaml"
    path.write_text(FILE)
    loaded = load_test_file(path)
    assert [a.type for a in loaded.online()] == ["is-json", "icontains", "llm-rubric"]
    assert loaded.threshold == 0.5


def test_the_store_keeps_the_newest_checks_and_skips_bad_ones() -> None:
    store = TemplateStore()
    checks = _checks([Assertion(type="is-json", online=True)])
    assert store.apply(b"checks:classify", encode(checks))
    assert store.checks("classify") == checks and store.checks_hash("classify") is not None
    forged = checks.model_copy(update={"content_hash": "0" * 64})
    assert not store.apply(b"checks:classify", encode(forged)) and store.skipped == 1
    assert not store.apply(b"checks:other", encode(checks)) and store.skipped == 2
    off = _checks([])
    assert store.apply(b"checks:classify", encode(off))
    assert store.checks("classify") is None and store.checks_hash("classify") == off.content_hash
    assert store.apply(b"checks:classify", None) and store.checks_hash("classify") is None


def _processor(sample: float) -> EvalsProcessor:
    fleet = FleetState(None, "t", LimitTable(), FleetConfig())
    model = ModelClient("http://127.0.0.1:9/v1", "-")  # never called: nothing is sampled
    config = EvalsConfig(judge_sample=sample, judge_model="m")
    return EvalsProcessor(TopicCatalog("t"), TemplateStore(), model, fleet, config, Registry())


def _completion(text: str, job_id: str = "j1") -> Completion:
    return Completion(
        job_id=job_id,
        batch_id="b",
        tenant="acme",
        model="m",
        template="classify",
        template_version=3,
        text=text,
        cost_usd=0.002,
    )


async def test_a_score_leaves_unsampled_model_checks_out_and_applies_the_threshold() -> None:
    checks = _checks(
        [
            Assertion(type="icontains", value="positive", online=True),
            Assertion(type="is-json", online=True, weight=3),
            Assertion(type="llm-rubric", value="is kind", online=True),
        ],
        threshold=0.2,
    )
    processor = _processor(sample=0.0)
    score = await processor.score(_completion("positive!"), checks)
    assert isinstance(score, EvalScore)
    assert [a.type for a in score.assertions] == ["icontains", "is-json"]
    assert score.score == pytest.approx(0.25) and score.passed and not score.judged
    assert score.template == "classify" and score.template_version == 3
    only_model = _checks([Assertion(type="llm-rubric", value="is kind", online=True)])
    assert await processor.score(_completion("x"), only_model) is None


def test_the_judge_sample_is_drawn_from_the_job_id() -> None:
    half = _processor(sample=0.5)
    drawn = [half._judged(f"job-{i}") for i in range(2000)]
    assert 900 <= sum(drawn) <= 1100
    assert drawn == [half._judged(f"job-{i}") for i in range(2000)]  # a redelivery: the same
    assert not any(_processor(0.0)._judged(f"job-{i}") for i in range(100))
    assert all(_processor(1.0)._judged(f"job-{i}") for i in range(100))


def test_the_pass_rate_alert_fires_once_and_clears(caplog: pytest.LogCaptureFixture) -> None:
    watch = PassRateWatch(EvalsConfig(alert_pass_rate=0.8, alert_window=10, alert_min_samples=5))
    caplog.set_level(logging.INFO, logger="processors.evals")
    for _ in range(4):
        watch.add("classify", "3", False)
    assert watch.alerts() == {("classify", "3"): 0.0}  # fewer than 5 scores: no alert yet
    for _ in range(4):
        watch.add("classify", "3", False)
    assert watch.alerts() == {("classify", "3"): 1.0} and watch.rates()[("classify", "3")] == 0
    for _ in range(10):
        watch.add("classify", "3", True)
    assert watch.alerts() == {("classify", "3"): 0.0}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("classify@3 dropped to 0.0%" in m for m in messages) == 1, messages
    assert sum("classify@3 is back" in m for m in messages) == 1, messages


async def test_a_regex_that_backtracks_fails_instead_of_freezing() -> None:
    hostile = Assertion(type="regex", value="(a+)+$")
    graded = await grade(hostile, Observed("a" * 40 + "b"), NoJudge())
    assert not graded.passed and "did not finish within" in graded.reason
    assert (await grade(Assertion(type="regex", value="^a+b$"), Observed("aab"), NoJudge())).passed


def _window(template: str, evaluated: int, passed: int) -> WindowReport:
    return WindowReport(
        window_start=datetime(2026, 11, 30, tzinfo=UTC),
        window_seconds=60,
        tenant="acme",
        template=template,
        model="m",
        revision=1,
        requests=evaluated,
        completions=evaluated,
        evaluated=evaluated,
        eval_passed=passed,
        eval_score_sum=float(passed),
        assertion_counts={"regex": evaluated},
        assertion_passes={"regex": passed},
    )


def test_reports_show_pass_rates_per_version_only_when_evaluated() -> None:
    rows = group_reports([_window("say@1", 40, 10), _window("say@2", 10, 10)], ["template"])
    assert [r.pass_rate for r in rows] == [0.25, 1.0]
    assert rows[0].as_dict()["assertion_pass_rates"] == {"regex": 0.25}
    table = render(rows, "table").splitlines()
    assert table[0].split()[-4:] == ["EVALS", "PASS_RATE", "SCORE", "FAILURES"]
    assert "25.0%" in table[1] and "100.0%" in table[2] and "40.0%" in table[3]  # TOTAL: 20/50
    plain = render(group_reports([_window("say@1", 0, 0)], ["template"]), "table")
    assert "PASS_RATE" not in plain


def test_the_commands_judge_takes_the_evals_models_from_the_settings() -> None:
    settings = Settings(
        openai_base_url="http://127.0.0.1:9/v1",
        evals_judge_model="judge-7b",
        evals_embedding_model="embed-small",
    )
    judge = judge_for(settings, None, None, None)
    assert (judge._config.judge_model, judge._config.embedding_model) == ("judge-7b", "embed-small")
    chosen = judge_for(settings, None, "other", "vectors")  # --model / --embedding-model win
    assert (chosen._config.judge_model, chosen._config.embedding_model) == ("other", "vectors")


async def test_hostile_completions_become_dead_letters_or_bounded_failures() -> None:
    processor = _processor(sample=0.0)
    store = processor._store
    hostile = _checks([Assertion(type="regex", value="(a+)+$", online=True)])
    store.apply(b"checks:classify", encode(hostile))
    for value in (b"", b"\xff\xfe", b"[1, 2]", b'{"kind": "completion"}', None):
        [dead] = await processor.handle(InRecord("c", 0, 7, b"k", value))
        failure = decode(dead.value, Failure)
        assert failure.stage == Stage.EVALS and failure.code.value in (
            "invalid_json",
            "schema_error",
        )
    no_template = _completion("x").model_copy(update={"template": None})
    assert await processor.handle(InRecord("c", 0, 8, b"k", encode(no_template))) == []
    # output that makes the template owner's regex backtrack: a failed check in ~1 s
    [out] = await processor.handle(InRecord("c", 0, 9, b"k", encode(_completion("a" * 5000 + "b"))))
    score = decode(out.value, EvalScore)
    assert not score.passed and "did not finish within" in score.assertions[0].reason


async def test_a_pattern_that_keeps_timing_out_fails_at_once_for_a_while() -> None:
    """A pattern that backtracks on every output would hold the one matcher every regex
    check of the worker shares a second per completion: after 3 timeouts in a row it
    fails at once, and the other patterns keep matching."""
    sandbox = RegexSandbox(limit=0.3)
    hostile, output = "(a+)+$", "a" * 40 + "b"
    try:
        for _ in range(3):
            with pytest.raises(AssertionUnavailable, match="did not finish within"):
                await sandbox.search(hostile, output)
        started = time.monotonic()
        with pytest.raises(AssertionUnavailable, match="timed out 3 times in a row"):
            await sandbox.search(hostile, output)
        assert time.monotonic() - started < 0.1
        assert await sandbox.search("^a+b$", output)
    finally:
        await sandbox.close()
