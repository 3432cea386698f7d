"""``promptmill templates test``: run templates' test cases through the pipeline, print a
table, write JUnit XML and JSON; exit 0 (all passed), 1 (a case failed) or 2 (could not
run)."""

from __future__ import annotations

import argparse
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson

from processors.evals import PipelineJudge
from producers.client import Client
from producers.prompt_tests import CaseRun, CouldNotRun, TestRun, run_tests
from promptmill import app
from promptmill.commands.batch import _client
from promptmill.settings import Settings
from promptmill.wiring import judge_for
from schemas import PromptmillError
from schemas.prompt_tests import TESTS_SUFFIX, LoadedTests, find_test_files, load_test_file

EXIT_FAILED = 1
EXIT_COULD_NOT_RUN = 2


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        type=Path,
        help=f"a directory (every *{TESTS_SUFFIX} below it), a test file, or a template NAME "
        f"(its NAME{TESTS_SUFFIX} below the current directory)",
    )
    parser.add_argument(
        "--ref",
        help="test this version or label (NAME@3, NAME@production or @production) instead "
        "of the local NAME.yaml",
    )
    parser.add_argument("--model", help="run the cases on this model (group) instead")
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each case N times, uncached: pass rates"
    )
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML here")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the workers"
    )
    parser.add_argument(
        "--embedding-model",
        help="the model of `similar` assertions' embeddings (default: "
        "PROMPTMILL_EVALS_EMBEDDING_MODEL)",
    )


@asynccontextmanager
async def judged_session(
    settings: Settings, chat_model: str | None, embedding_model: str | None
) -> AsyncIterator[tuple[Client, PipelineJudge]]:
    """A started submit client, and the model endpoint as judge through the fleet's limits
    (``chat_model``: PROMPTMILL_EVALS_JUDGE_MODEL or the default model when None), both
    closed on exit."""
    redis = app.redis(settings)
    judge = judge_for(settings, redis, chat_model, embedding_model)
    try:
        await judge.start()
        async with _client(settings) as client:
            yield client, judge
    finally:
        await judge.stop()
        if redis is not None:
            await redis.aclose()


def _files(path: Path) -> list[LoadedTests]:
    if not path.exists() and len(path.parts) == 1 and not path.suffix:
        return [load_test_file(_by_name(str(path), Path.cwd()))]
    if path.is_dir():
        found = find_test_files(path)
        if not found:
            raise PromptmillError(f"{path}: no *{TESTS_SUFFIX} test files")
        return [load_test_file(p) for p in found]
    return [load_test_file(path)]


def _by_name(name: str, root: Path) -> Path:
    """The one ``NAME.tests.yaml`` below ``root``."""
    found = [p for p in find_test_files(root) if p.name == f"{name}{TESTS_SUFFIX}"]
    if not found:
        raise PromptmillError(
            f"{name}: no such path, and no {name}{TESTS_SUFFIX} below {root} (give the test "
            "file or its directory)"
        )
    if len(found) > 1:
        raise PromptmillError(
            f"{name}: {len(found)} files named {name}{TESTS_SUFFIX} below {root} "
            f"({', '.join(map(str, found[:3]))}): give the one to run"
        )
    return found[0]


async def templates_test(settings: Settings, args: argparse.Namespace) -> None:
    if args.repeat < 1:
        raise SystemExit("promptmill: --repeat must be 1 or more")
    try:
        files = _files(args.path)
    except PromptmillError as exc:
        print(f"promptmill: {exc}")
        raise SystemExit(EXIT_COULD_NOT_RUN) from None
    started = time.monotonic()
    async with judged_session(settings, args.model, args.embedding_model) as (client, judge):
        try:
            run = await run_tests(
                app.kafka_connection(settings),
                app.catalog(settings),
                client,
                files,
                judge,
                app.operator(settings),
                ref=args.ref,
                model=args.model,
                repeat=args.repeat,
                within=args.timeout,
            )
        except (CouldNotRun, PromptmillError) as exc:
            print(f"promptmill: could not run the tests: {exc}")
            raise SystemExit(EXIT_COULD_NOT_RUN) from None
    run.seconds = time.monotonic() - started
    print(table(run))
    if args.junit is not None:
        args.junit.write_bytes(junit_xml(run))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(as_json(run), option=orjson.OPT_INDENT_2))
    if not run.passed:
        raise SystemExit(EXIT_FAILED)


class LabelRefused(PromptmillError):
    """``--require-tests``: a label stays where it was, because the version's tests failed
    (or it has none)."""


async def require_tests(settings: Settings, tests: Path, refs: dict[str, str], label: str) -> None:
    """Run the test files under ``tests`` of the templates in ``refs`` (name -> the
    ``NAME@VERSION`` about to get ``label``); print their table; raise
    :class:`LabelRefused` naming what failed, or what has no test file."""
    found = {loaded.template: loaded for loaded in _files(tests)}
    missing = sorted(name for name in refs if name not in found)
    if missing:
        raise LabelRefused(
            f"--require-tests: label {label} not moved: no test file for "
            f"{', '.join(missing)} in {tests}"
        )
    async with judged_session(settings, None, None) as (client, judge):
        try:
            run = await run_tests(
                app.kafka_connection(settings),
                app.catalog(settings),
                client,
                [found[name] for name in sorted(refs)],
                judge,
                app.operator(settings),
                refs=refs,
            )
        except CouldNotRun as exc:
            raise LabelRefused(
                f"--require-tests: label {label} not moved: the tests could not run: {exc}"
            ) from None
    print(table(run))
    failed = [case for case in run.cases if not case.passed]
    if failed:
        which = "; ".join(f"{case.ref} {case.name!r}" for case in failed)
        raise LabelRefused(
            f"--require-tests: label {label} not moved: {len(failed)} case(s) failed: {which}"
        )


def table(run: TestRun) -> str:
    """One row per assertion: case, assertion, pass/fail, reason, tokens, cost, latency."""
    header = (
        f"{'case':<36} {'assertion':<34} {'result':<6} {'tokens':>6} {'cost $':>9} "
        f"{'ms':>6}  reason"
    )
    lines = [header, "-" * len(header)]
    for case in run.cases:
        tokens, cost, latency = case.totals()
        title = f"{case.template}: {case.name}"
        if case.runs > 1:
            title += f" [{case.passes}/{case.runs}]"
        for number, (label, ok, reason) in enumerate(case.assertion_rows()):
            first = number == 0
            lines.append(
                f"{(title if first else '')[:36]:<36} {label[:34]:<34} "
                f"{'PASS' if ok else 'FAIL':<6} "
                f"{(str(tokens) if first else ''):>6} {(f'{cost:.6f}' if first else ''):>9} "
                f"{(_ms(case, latency) if first else ''):>6}  {reason[:100]}"
            )
    passed = sum(1 for c in run.cases if c.passed)
    lines.append(
        f"{passed} of {len(run.cases)} case(s) passed; batch {run.batch_id}; {run.seconds:.1f} s"
    )
    return "\n".join(lines)


def _ms(case: CaseRun, latency: float) -> str:
    """Its mean latency, or ``cache`` when every answer came from the cache."""
    if case.completions and all(c.cached for c in case.completions):
        return "cache"
    return f"{latency:.0f}"


def junit_xml(run: TestRun) -> bytes:
    """JUnit XML: a test suite per template, a test case per case (failures and errors as
    JUnit has them: an assertion that failed, a job that could not complete)."""
    suites = ET.Element("testsuites", name="promptmill templates test")
    by_template: dict[str, list[CaseRun]] = {}
    for case in run.cases:
        by_template.setdefault(case.template, []).append(case)
    total_tests = total_failures = total_errors = 0
    for template, cases in by_template.items():
        failures = sum(1 for c in run.cases if c.template == template and c.grades and not c.passed)
        errors = sum(1 for c in run.cases if c.template == template and c.failures)
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=template,
            tests=str(len(cases)),
            failures=str(failures),
            errors=str(errors),
            skipped="0",
            time=f"{run.seconds:.3f}",
        )
        for case in (c for c in run.cases if c.template == template):
            _, _, latency = case.totals()
            element = ET.SubElement(
                suite,
                "testcase",
                name=case.name,
                classname=f"{template}.{case.ref}",
                time=f"{latency / 1000:.3f}",
            )
            if case.failures:
                failure = case.failures[0]
                error = ET.SubElement(
                    element, "error", message=failure.message[:500], type=failure.code.value
                )
                error.text = failure.message
            elif not case.passed:
                wrong = [
                    f"{label}: {reason}" for label, ok, reason in case.assertion_rows() if not ok
                ]
                failed = ET.SubElement(
                    element,
                    "failure",
                    message=(wrong[0] if wrong else "failed")[:500],
                    type="assertion",
                )
                failed.text = "\n".join(wrong)
        total_tests += len(cases)
        total_failures += failures
        total_errors += errors
    suites.set("tests", str(total_tests))
    suites.set("failures", str(total_failures))
    suites.set("errors", str(total_errors))
    suites.set("time", f"{run.seconds:.3f}")
    written: bytes = ET.tostring(suites, encoding="utf-8", xml_declaration=True)
    return written


def as_json(run: TestRun) -> dict[str, object]:
    return {
        "batch_id": run.batch_id,
        "passed": run.passed,
        "seconds": run.seconds,
        "cases": [
            {
                "template": case.template,
                "ref": case.ref,
                "case": case.name,
                "line": case.line,
                "passed": case.passed,
                "runs": case.runs,
                "passes": case.passes,
                "tokens": case.totals()[0],
                "cost_usd": case.totals()[1],
                "latency_ms": case.totals()[2],
                "assertions": [
                    {"assertion": label, "passed": ok, "reason": reason}
                    for label, ok, reason in case.assertion_rows()
                ],
                "scores": [g.score for g in case.grades],
                "failures": [f"{f.code.value}: {f.message}" for f in case.failures],
            }
            for case in run.cases
        ],
    }
