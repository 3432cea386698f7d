"""The evals processor: each completion graded by its template's online checks.

``promptmill worker --processor evals`` consumes the completions topic. A completion of a
template that has online checks (the assertions its test file marks ``online: true``,
pushed by ``templates push``, :class:`~schemas.evals.OnlineChecks`) is graded by them
and its :class:`~schemas.evals.EvalScore` goes to the evals topic, keyed by job id;
reporting counts each job's score once into its completion's window, so pass rates per
template version show in ``report`` whatever a ``kill -9`` redelivers.

Cheap checks (``contains``, ``regex``, ``is-json``, ``cost``...) grade every completion;
the model-backed ones (``llm-rubric``, ``similar``) only a sampled share
(``PROMPTMILL_EVALS_JUDGE_SAMPLE``), drawn from the job id so a redelivered completion is
judged or not as before. Judge calls go through the same fleet rate limits as the jobs.
A judge that cannot answer leaves its assertion out of that score (counted), rather than
failing the completion: an outage of the judge is not a drop in quality. A regex runs in
a child process with a time limit (:class:`~processors.assertions.RegexSandbox`): a
pattern that backtracks on hostile output fails that assertion and never stalls the
worker.

Each worker keeps the pass rate of the last ``PROMPTMILL_EVALS_ALERT_WINDOW`` scores of
each template version; when it falls below ``PROMPTMILL_EVALS_ALERT_PASS_RATE`` (with at
least ``PROMPTMILL_EVALS_ALERT_MIN_SAMPLES`` scores) it logs one warning and sets
``promptmill_eval_pass_rate_low`` to 1 until the rate recovers.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from processors.assertions import (
    RUBRIC_PARAMS,
    Grade,
    JudgeUnavailable,
    Observed,
    cosine,
    grade,
    read_rubric,
    rubric_messages,
    verdict,
)
from processors.fleet import FleetState
from processors.fleet.ticket import Ticket
from processors.model import ModelCallError, ModelClient
from processors.model_user import ModelUser
from processors.runtime import InRecord, Outcome
from processors.runtime.deadletters import About, DeadLetters, completion_of
from schemas import ChatMessage, Completion, Stage, encode
from schemas.evals import MODEL_BACKED, AssertionScore, EvalScore, OnlineChecks
from schemas.prompt_tests import TestCase
from schemas.templates import canary_draw
from schemas.validation import describe_validation_error
from topics import TopicCatalog, TopicKind
from topics.metrics import Registry
from topics.templates import TemplateStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalsConfig:
    judge_sample: float = 0.1  # share of completions whose model-backed checks run
    judge_model: str = ""  # the chat model of llm-rubric
    embedding_model: str = "text-embedding-3-small"  # of similar
    alert_pass_rate: float | None = None  # below it: warning + promptmill_eval_pass_rate_low
    alert_window: int = 200  # scores per template version the pass rate is taken over
    alert_min_samples: int = 20  # before which no alert


class PipelineJudge(ModelUser):
    """The judge of model-backed checks through the pipeline's model client and fleet
    limits, spent on the completion's tenant."""

    def __init__(
        self, model: ModelClient, fleet: FleetState, config: EvalsConfig, tenant: str
    ) -> None:
        super().__init__(model, fleet)
        self._config = config
        self._tenant = tenant

    async def similarity(self, output: str, expected: str) -> float:
        name = self._config.embedding_model
        tokens = math.ceil((len(output) + len(expected)) / 4) + 2
        try:
            ticket = Ticket(self._fleet, name, self._tenant, tokens, None)
            vectors, _ = await self._model.embed(name, [output or " ", expected], ticket)
        except ModelCallError as exc:
            raise JudgeUnavailable(f"similar: the embeddings call failed: {exc.message}") from None
        return cosine(vectors[0], vectors[1])

    async def rubric(self, output: str, rubric: str, vars: dict[str, Any]) -> tuple[bool, str]:
        name = self._config.judge_model
        messages = [ChatMessage.model_validate(m) for m in rubric_messages(output, rubric)]
        tokens = math.ceil((len(output) + len(rubric)) / 4) + 100
        ticket = Ticket(self._fleet, name, self._tenant, tokens, None)
        try:
            reply = await self._model.complete(name, messages, RUBRIC_PARAMS, ticket)
        except ModelCallError as exc:
            raise JudgeUnavailable(f"llm-rubric: the judge call failed: {exc.message}") from None
        return read_rubric(reply.text)


class PassRateWatch:
    """The pass rate of each template version's last scores on this worker, and the alert
    when it is below the configured rate."""

    def __init__(self, config: EvalsConfig) -> None:
        self._config = config
        self._scores: dict[tuple[str, str], deque[bool]] = {}
        self._low: dict[tuple[str, str], bool] = {}

    def add(self, template: str, version: str, passed: bool) -> None:
        key = (template, version)
        scores = self._scores.setdefault(key, deque(maxlen=self._config.alert_window))
        scores.append(passed)
        threshold = self._config.alert_pass_rate
        if threshold is None or len(scores) < self._config.alert_min_samples:
            return
        rate = sum(scores) / len(scores)
        low = rate < threshold
        if low and not self._low.get(key):
            log.warning(
                "eval pass rate of %s@%s dropped to %.1f%% over its last %d scores "
                "(alert below %.1f%%)",
                template,
                version,
                100 * rate,
                len(scores),
                100 * threshold,
            )
        elif not low and self._low.get(key):
            log.info(
                "eval pass rate of %s@%s is back at %.1f%% (alert below %.1f%%)",
                template,
                version,
                100 * rate,
                100 * threshold,
            )
        self._low[key] = low

    def rates(self) -> dict[tuple[str, ...], float]:
        return {k: sum(v) / len(v) for k, v in self._scores.items() if v}

    def alerts(self) -> dict[tuple[str, ...], float]:
        return {k: float(self._low.get(k, False)) for k in self._scores}


class EvalsProcessor(ModelUser):
    """Handles records of the completions topic."""

    name = "evals"

    def __init__(
        self,
        catalog: TopicCatalog,
        store: TemplateStore,
        model: ModelClient,
        fleet: FleetState,
        config: EvalsConfig,
        registry: Registry,
    ) -> None:
        self._evals = catalog.name(TopicKind.EVALS)
        self._dead = DeadLetters(catalog.name(TopicKind.FAILURES), Stage.EVALS)
        super().__init__(model, fleet)
        self._store = store
        self._config = config
        self.watch = PassRateWatch(config)
        labels = ("template", "version")
        self._scored = registry.counter(
            "promptmill_evals_total",
            "Completions graded by their template's online checks, by verdict.",
            (*labels, "passed"),
        )
        self._assertions = registry.counter(
            "promptmill_eval_assertions_total",
            "Online assertions graded, by type and result.",
            (*labels, "assertion", "passed"),
        )
        self._unchecked = registry.counter(
            "promptmill_evals_skipped_total",
            "Completions not graded: no template, no online checks, or only model-backed "
            "checks and not sampled.",
            ("reason",),
        )
        self._judge_errors = registry.counter(
            "promptmill_eval_judge_unavailable_total",
            "Model-backed assertions left out of a score because the judge did not answer.",
            ("assertion",),
        )
        registry.gauge(
            "promptmill_eval_pass_rate",
            "Pass rate of each template version's last PROMPTMILL_EVALS_ALERT_WINDOW scores.",
            labels,
            read=self.watch.rates,
        )
        registry.gauge(
            "promptmill_eval_pass_rate_low",
            "1 while a template version's pass rate is below PROMPTMILL_EVALS_ALERT_PASS_RATE.",
            labels,
            read=self.watch.alerts,
        )

    async def handle(self, record: InRecord) -> Sequence[Outcome]:
        try:
            completion = Completion.model_validate_json(record.value or b"")
        except ValidationError as exc:
            code, message = describe_validation_error(exc)
            return [self._dead.outcome(record, code, f"evals: {message}", About())]
        if completion.template is None:
            self._unchecked.inc(reason="no_template")
            return []
        checks = self._store.checks(completion.template)
        if checks is None:
            self._unchecked.inc(reason="no_checks")
            return []
        score = await self.score(completion, checks)
        if score is None:
            return []
        key = completion.job_id.encode()
        return [Outcome(self._evals, encode(score), key=key, headers=list(record.headers))]

    async def score(self, completion: Completion, checks: OnlineChecks) -> EvalScore | None:
        """``completion`` graded by ``checks`` (None if nothing was gradable)."""
        judged = self._judged(completion.job_id)
        chosen = [a for a in checks.assertions if judged or a.base_type not in MODEL_BACKED]
        if not chosen:
            self._unchecked.inc(reason="not_sampled")
            return None
        seen = Observed(
            output=completion.text,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
            cost_usd=completion.cost_usd,
            latency_ms=completion.latency_ms,
        )
        judge = PipelineJudge(self._model, self._fleet, self._config, completion.tenant)
        grades: list[Grade] = []
        for assertion in chosen:
            graded = await grade(assertion, seen, judge)
            if graded.unavailable:
                self._judge_errors.inc(assertion=assertion.type)
            else:
                grades.append(graded)
        if not grades:
            self._unchecked.inc(reason="judge_unavailable")
            return None
        kept = TestCase(assertions=[g.assertion for g in grades], threshold=checks.threshold)
        case = verdict(kept, grades)
        version = str(completion.template_version or "-")
        template = completion.template or "-"
        self._scored.inc(template=template, version=version, passed=_bool(case.passed))
        for g in grades:
            kind, passed = g.assertion.type, _bool(g.passed)
            self._assertions.inc(template=template, version=version, assertion=kind, passed=passed)
        self.watch.add(template, version, case.passed)
        return EvalScore(
            job_id=completion.job_id,
            batch_id=completion.batch_id,
            tenant=completion.tenant,
            custom_id=completion.custom_id,
            template=template,
            template_version=completion.template_version,
            model=completion.model,
            group=completion.group,
            deployment=completion.deployment,
            completed_at=completion.created_at,
            passed=case.passed,
            score=min(1.0, max(0.0, case.score)),
            assertions=[
                AssertionScore(
                    type=g.assertion.type,
                    passed=g.passed,
                    score=min(1.0, max(0.0, g.score)),
                    weight=g.assertion.weight,
                    reason=g.reason[:500],
                )
                for g in grades
            ],
            judged=judged and any(g.assertion.base_type in MODEL_BACKED for g in grades),
            checks_hash=checks.content_hash,
        )

    def _judged(self, job_id: str) -> bool:
        """Whether this job's model-backed checks run: a draw from its id, so a redelivery
        decides the same."""
        return canary_draw(f"judge:{job_id}") < 100 * self._config.judge_sample

    def dead_letter(self, record: InRecord, error: BaseException) -> Outcome:
        return self._dead.of_error(record, error, About.of(completion_of(record)))


def _bool(value: bool) -> str:
    return "true" if value else "false"
