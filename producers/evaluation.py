"""``promptmill eval BASELINE CANDIDATE --dataset FILE.jsonl``: two refs over one dataset.

A dataset line is a JSON object: ``vars`` (the template's variables), optionally
``expected`` (an output the answer should be close to: a ``similar`` assertion at the
run's threshold), ``assert`` (assertions of that row, as in a test file) and
``description``; assertions given for every row (``--assert FILE``: a test file's
``defaults``) come first. Each side is a ref, ``NAME@VERSION`` or ``NAME@LABEL``, with an
optional ``#MODEL`` to run it on another model: the same template on two models is
``summarize@3`` against ``summarize@3#gpt-4o``. Both sides run through the workers as
their own batches, at once, and are graded like template tests.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from processors.assertions import Judge
from producers.client import Client
from producers.prompt_tests import CaseRun, CouldNotRun, TestRun, run_tests
from schemas import TemplateRef
from schemas.audit import Actor
from schemas.prompt_tests import Assertion, LoadedTests, TestCase
from schemas.yaml_files import YamlFileError
from topics import KafkaConnection, TopicCatalog, TopicKind
from topics.templates import TemplateRegistry, UnknownTemplate


@dataclass(frozen=True)
class Side:
    ref: str  # NAME@VERSION or NAME@LABEL
    model: str | None

    @classmethod
    def parse(cls, text: str) -> Side:
        ref, _, model = text.partition("#")
        if "@" not in ref:
            raise CouldNotRun(f"{text}: give a version or a label (NAME@3, NAME@production)")
        return cls(str(TemplateRef.parse(ref)), model or None)

    @property
    def template(self) -> str:
        return TemplateRef.parse(self.ref).name

    def __str__(self) -> str:
        return self.ref + (f"#{self.model}" if self.model else "")


def load_dataset(
    path: Path, shared: list[Assertion], similarity: float, template: str
) -> LoadedTests:
    """The dataset's rows as test cases (errors name file, line and field)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise YamlFileError(f"{path}: cannot read the dataset: {exc.strerror}") from None
    cases, numbers = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise YamlFileError(f"{path}:{number}: not JSON: {exc}") from None
        if not isinstance(row, dict):
            raise YamlFileError(f"{path}:{number}: a row is a JSON object")
        unknown = sorted(set(row) - {"vars", "expected", "assert", "description"})
        if unknown:
            raise YamlFileError(f"{path}:{number}: field {unknown[0]}: not a dataset field")
        own: list[Any] = list(row.get("assert") or [])
        if "expected" in row:
            own.append({"type": "similar", "value": row["expected"], "threshold": similarity})
        try:
            case = TestCase.model_validate(
                {"description": row.get("description"), "vars": row.get("vars") or {}}
                | {"assert": own}
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            message = str(err["msg"]).removeprefix("Value error, ")
            raise YamlFileError(f"{path}:{number}: field {field}: {message}") from None
        merged = case.model_copy(update={"assertions": [*shared, *case.assertions]})
        if not merged.assertions:
            raise YamlFileError(
                f"{path}:{number}: no assertion for this row (give assert, expected or --assert)"
            )
        cases.append(merged)
        numbers.append(number)
    if not cases:
        raise YamlFileError(f"{path}: the dataset has no rows")
    return LoadedTests(template=template, path=path, cases=cases, lines=numbers)


@dataclass
class Comparison:
    baseline: Side
    candidate: Side
    runs: tuple[TestRun, TestRun]
    margin: float

    def rate(self, side: int) -> float:
        cases = self.runs[side].cases
        return sum(c.passed for c in cases) / len(cases)

    def mean_score(self, side: int) -> float:
        scores = [g.score for c in self.runs[side].cases for g in c.grades]
        return sum(scores) / len(scores) if scores else 0.0

    def assertion_rates(self) -> list[tuple[str, float, float]]:
        """Per assertion (by position and type, as the rows share them): each side's rate."""
        out: dict[str, list[list[bool]]] = {}
        for side in (0, 1):
            for case in self.runs[side].cases:
                for label, ok, _ in case.assertion_rows():
                    out.setdefault(label.split(" ", 1)[0], [[], []])[side].append(ok)
        return [(name, _share(seen[0]), _share(seen[1])) for name, seen in out.items() if seen[0]]

    def totals(self, side: int) -> tuple[int, float, float | None, float | None]:
        """(tokens, cost, latency p50, latency p95) of a side's completions."""
        done = [c for case in self.runs[side].cases for c in case.completions]
        latencies = sorted(c.latency_ms for c in done if not c.cached)
        return (
            sum(c.usage.total_tokens for c in done),
            sum(c.cost_usd for c in done),
            _quantile(latencies, 0.5),
            _quantile(latencies, 0.95),
        )

    def differing(self) -> list[tuple[CaseRun, CaseRun]]:
        pairs = zip(self.runs[0].cases, self.runs[1].cases, strict=True)
        return [(a, b) for a, b in pairs if a.passed != b.passed]

    @property
    def no_worse(self) -> bool:
        """Whether the candidate's pass rate is at least the baseline's less the margin."""
        return self.rate(1) >= self.rate(0) - self.margin - 1e-9


def _share(seen: list[bool]) -> float:
    return sum(seen) / len(seen) if seen else 0.0


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


async def evaluate(
    conn: KafkaConnection,
    catalog: TopicCatalog,
    client: Client,
    baseline: Side,
    candidate: Side,
    dataset: Path,
    shared: list[Assertion],
    judge: Judge,
    actor: Actor,
    *,
    similarity: float = 0.8,
    margin: float = 0.0,
    within: float = 600.0,
) -> Comparison:
    """Both sides over ``dataset``, as two batches at once, graded."""
    topic = catalog.name(TopicKind.TEMPLATES)
    async with TemplateRegistry(conn, topic, follow=False) as registry:
        for side in (baseline, candidate):
            try:
                registry.store.resolve(side.ref)
            except UnknownTemplate as exc:
                raise CouldNotRun(f"{side}: {exc}") from None
    runs = await asyncio.gather(
        *(
            run_tests(
                conn,
                catalog,
                client,
                [load_dataset(dataset, shared, similarity, side.template)],
                judge,
                actor,
                ref=side.ref,
                model=side.model,
                within=within,
            )
            for side in (baseline, candidate)
        )
    )
    return Comparison(baseline, candidate, (runs[0], runs[1]), margin)
