"""``promptmill templates test``: a template's test cases, run as one batch through the real
pipeline (Kafka, the workers, the fleet's limits, the cache, cost accounting), graded.

Each case (times ``repeat``) becomes one job of the template at the version under test:
by default the local ``NAME.yaml`` beside the test file, published as a version if its
content is new (no label moves), so a test run checks the file as it is now; or the
``ref`` given (``NAME@3``, ``NAME@production``). With ``repeat`` above 1 the jobs are
uncached, and each case reports its pass rate. A job that fails is a failed case whose
reason is the dead letter's code and message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processors.assertions import CaseGrade, Grade, Judge, Observed, grade_case
from producers.client import Client, new_batch_id
from producers.results import ResultFollower
from producers.templates import TemplateFile, load_template_file, push_templates
from schemas import Completion, Failure, PromptJob, TemplateRef
from schemas.audit import Actor
from schemas.jobs import ModelParams, line_job_id
from schemas.prompt_tests import LoadedTests, TestCase
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.templates import TemplateRegistry


class CouldNotRun(Exception):
    """The tests could not be run (no worker answered in time, the template is unknown...):
    a distinct exit code from a test that ran and failed."""


@dataclass
class CaseRun:
    """One case of one test file: each repetition's grade, or the failure that stopped it."""

    template: str
    ref: str
    index: int
    case: TestCase
    line: int
    grades: list[CaseGrade] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.case.description or f"case {self.index + 1} (line {self.line})"

    @property
    def runs(self) -> int:
        return len(self.grades) + len(self.failures)

    @property
    def passes(self) -> int:
        return sum(1 for g in self.grades if g.passed)

    @property
    def passed(self) -> bool:
        return self.runs > 0 and self.passes == self.runs

    def assertion_rows(self) -> list[tuple[str, bool, str]]:
        """(assertion, passed every time, reason of the first failure or of the pass)."""
        rows: list[tuple[str, bool, str]] = []
        for position, assertion in enumerate(self.case.assertions):
            seen: list[Grade] = [g.grades[position] for g in self.grades]
            failed = [g for g in seen if not g.passed]
            label = assertion.type + (f" {_brief(assertion.value)}" if assertion.value else "")
            reason = (failed or seen)[0].reason if seen else "not run"
            if failed and len(seen) > 1:  # repeated: how often, and the first failure
                reason = f"{len(seen) - len(failed)}/{len(seen)} passed; {reason}"
            ok = bool(seen) and not failed and not self.failures
            rows.append((label, ok, reason))
        for failure in self.failures[:1]:
            rows.append(("(the job)", False, f"{failure.code.value}: {failure.message}"))
        return rows

    def totals(self) -> tuple[int, float, float]:
        """(tokens, cost in dollars, mean latency in ms) of its completions."""
        done = self.completions
        tokens = sum(c.usage.total_tokens for c in done)
        cost = sum(c.cost_usd for c in done)
        latency = sum(c.latency_ms for c in done) / len(done) if done else 0.0
        return tokens, cost, latency


@dataclass
class TestRun:
    __test__ = False
    batch_id: str
    cases: list[CaseRun]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.cases)


def _brief(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def run_tests(
    conn: KafkaConnection,
    catalog: TopicCatalog,
    client: Client,
    files: Sequence[LoadedTests],
    judge: Judge,
    actor: Actor,
    *,
    ref: str | None = None,
    model: str | None = None,
    repeat: int = 1,
    within: float = 300.0,
    refs: dict[str, str] | None = None,
) -> TestRun:
    """Every case of ``files`` as one batch; each completion graded. ``refs``: the ref to
    test per template name (over ``ref``)."""
    cases: list[CaseRun] = []
    jobs: list[PromptJob] = []
    batch_id = new_batch_id()
    for loaded in files:
        chosen = (refs or {}).get(loaded.template, ref)
        under_test = await _version_under_test(conn, catalog, loaded, chosen, actor)
        for index, (case, line) in enumerate(zip(loaded.cases, loaded.lines, strict=True)):
            cases.append(CaseRun(loaded.template, under_test, index, case, line))
            for _ in range(repeat):
                jobs.append(
                    PromptJob(
                        job_id=line_job_id(batch_id, 1, len(jobs) + 1),
                        batch_id=batch_id,
                        template=under_test,
                        variables=case.vars,
                        model=model,
                        params=ModelParams(),
                        cache=False if repeat > 1 else None,
                        custom_id=f"{len(cases) - 1}",
                        metadata={"test_file": str(loaded.path), "case": index},
                    )
                )
    report = await client.submit_items(jobs, batch_id=batch_id, source="templates test")
    if report.errors:
        first = report.errors[0]
        raise CouldNotRun(f"a test job was refused at submit: {first.code.value}: {first.message}")
    follower = ResultFollower(conn, catalog, batch_id)
    records: list[Completion | Failure] = []

    async def follow() -> None:
        async for record in follower.records(follow=True, manifest=report.manifest):
            records.append(record)

    try:
        await asyncio.wait_for(follow(), within)
    except TimeoutError:
        raise CouldNotRun(
            f"only {len(records)} of {len(jobs)} test jobs finished within {within:g} s: is a "
            "worker running (`promptmill worker`)?"
        ) from None
    by_file = {loaded.template: loaded for loaded in files}
    for record in sorted(records, key=lambda r: r.job_id):
        case_run = cases[int(record.custom_id or 0)]
        if isinstance(record, Failure):
            case_run.failures.append(record)
            continue
        case_run.completions.append(record)
        seen = Observed(
            output=record.text,
            vars=case_run.case.vars,
            prompt_tokens=record.usage.prompt_tokens,
            completion_tokens=record.usage.completion_tokens,
            cost_usd=record.cost_usd,
            latency_ms=record.latency_ms,
        )
        loaded = by_file[case_run.template]
        case_run.grades.append(await grade_case(case_run.case, seen, judge, loaded.python_file))
    return TestRun(batch_id, cases)


async def _version_under_test(
    conn: KafkaConnection,
    catalog: TopicCatalog,
    loaded: LoadedTests,
    ref: str | None,
    actor: Actor,
) -> str:
    """``NAME@N``: the ``ref``'s, or the local template file's: the version with its
    content, published as the next version only if no version has it."""
    if ref is not None:
        parsed = TemplateRef.parse(ref if not ref.startswith("@") else loaded.template + ref)
        if parsed.name != loaded.template:
            raise CouldNotRun(f"--ref {ref} names {parsed.name}, not {loaded.template}")
        return str(parsed)
    source = _template_file(loaded.path)
    if source is None:
        raise CouldNotRun(
            f"{loaded.path}: no {loaded.template}.yaml beside it to test (or give --ref)"
        )
    item = load_template_file(source)
    try:  # a version with this content already (an older one, say): test it as it is
        return f"{loaded.template}@{await version_of(conn, catalog, item)}"
    except CouldNotRun:
        await push_templates(conn, catalog, [item], None, actor)
        return f"{loaded.template}@{await version_of(conn, catalog, item)}"


async def version_of(conn: KafkaConnection, catalog: TopicCatalog, item: TemplateFile) -> int:
    """The published version whose content is ``item``'s (the newest, if several)."""
    topic = catalog.name(TopicKind.TEMPLATES)
    async with TemplateRegistry(conn, topic, follow=False) as registry:
        versions = registry.store.versions(item.body.name)
    digest = item.body.compute_hash()
    same = [t.version for t in versions if t.content_hash == digest]
    if not same:
        raise CouldNotRun(f"{item.path}: its content is not published (push it first)")
    return max(same)


def _template_file(test_file: Path) -> Path | None:
    stem = test_file.name.removesuffix(".tests.yaml")
    for suffix in (".yaml", ".yml"):
        candidate = test_file.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None
