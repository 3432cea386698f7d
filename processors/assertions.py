"""Grading a completion against a test case's assertions (:mod:`schemas.prompt_tests`).

Each assertion gives a :class:`Grade`: pass or fail, a score from 0 to 1 (1 or 0, but for
``similar``, the similarity, and ``python``, what the function returns) and a reason that
says what was wrong. ``not-`` inverts the pass and the score. A case passes when every
assertion of weight above 0 passes or, with a ``threshold``, when the weighted mean score
reaches it.

What needs a model goes through a :class:`Judge`: ``similar`` asks it for the cosine
similarity of two texts' embeddings, ``llm-rubric`` for a verdict on the output (the
pipeline's judge, :class:`processors.evals.PipelineJudge`, calls the model endpoint through
the fleet's rate limits, for the commands and the evals worker alike). A
``python`` assertion runs its function in a child process with a time limit (a check that
loops is a failed assertion, not a stuck run); the function gets the output and a context
(``vars``, ``tokens``, ``cost_usd``, ``latency_ms``) and returns a bool, a score, or
``{"pass": ..., "score": ..., "reason": ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import orjson

from schemas.prompt_tests import DEFAULT_SIMILARITY, Assertion, TestCase

PYTHON_TIMEOUT_SECONDS = 5.0
PYTHON_MAX_OUTPUT = 64 * 1024


@dataclass(frozen=True)
class Observed:
    """A completion as the assertions see it."""

    output: str
    vars: dict[str, Any] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0


@dataclass(frozen=True)
class Grade:
    assertion: Assertion
    passed: bool
    score: float
    reason: str
    unavailable: bool = False  # the judge could not answer (a failure, for templates test)


@dataclass(frozen=True)
class CaseGrade:
    passed: bool
    score: float
    grades: list[Grade]


class Judge(Protocol):
    """What model-backed assertions ask (the pipeline's model, or a test's stand-in)."""

    async def similarity(self, output: str, expected: str) -> float: ...

    async def rubric(self, output: str, rubric: str, vars: dict[str, Any]) -> tuple[bool, str]: ...


class NoJudge:
    """For runs without a model: model-backed assertions fail, saying so."""

    async def similarity(self, output: str, expected: str) -> float:
        raise AssertionUnavailable("similar needs a model's embeddings; none is configured")

    async def rubric(self, output: str, rubric: str, vars: dict[str, Any]) -> tuple[bool, str]:
        raise AssertionUnavailable("llm-rubric needs a judge model; none is configured")


RUBRIC_PROMPT = (
    "You grade an output against a rubric. Answer PASS or FAIL on the first line, then one "
    "short sentence saying why."
)


RUBRIC_PARAMS: dict[str, Any] = {"temperature": 0, "max_tokens": 64}


def rubric_messages(output: str, rubric: str) -> list[dict[str, str]]:
    """The judge's chat for an ``llm-rubric`` assertion."""
    return [
        {"role": "system", "content": RUBRIC_PROMPT},
        {"role": "user", "content": f"Rubric: {rubric}\n\nOutput:\n{output}"},
    ]


def read_rubric(text: str) -> tuple[bool, str]:
    """(pass, reason) from a judge's answer: its first word is PASS or FAIL."""
    text = text.strip()
    verdict = text.split(maxsplit=1)[0].strip(".:,").upper() if text else ""
    if verdict not in ("PASS", "FAIL"):
        return False, f"the judge did not answer PASS or FAIL: {text[:120]!r}"
    return verdict == "PASS", text[:200]


class AssertionUnavailable(Exception):
    """An assertion that could not be evaluated (it fails, with this as its reason)."""


class JudgeUnavailable(AssertionUnavailable):
    """The model behind a model-backed assertion did not answer (the online evals leave
    such an assertion out of the score instead)."""


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """The cosine similarity of two vectors (0 if either is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


async def grade_case(
    case: TestCase,
    observed: Observed,
    judge: Judge,
    python_file: Any = None,
) -> CaseGrade:
    """Every assertion of ``case`` on ``observed``, and the case's verdict.
    ``python_file(assertion)`` gives a python assertion's (file, function)."""
    grades = [await grade(a, observed, judge, python_file) for a in case.assertions]
    return verdict(case, grades)


def verdict(case: TestCase, grades: list[Grade]) -> CaseGrade:
    weights = sum(g.assertion.weight for g in grades)
    score = sum(g.assertion.weight * g.score for g in grades) / weights if weights else 1.0
    if case.threshold is not None:
        passed = score >= case.threshold
    else:
        passed = all(g.passed for g in grades if g.assertion.weight > 0)
    return CaseGrade(passed, score, grades)


async def grade(
    assertion: Assertion, observed: Observed, judge: Judge, python_file: Any = None
) -> Grade:
    """One assertion on ``observed``."""
    try:
        passed, score, reason = await _check(assertion, observed, judge, python_file)
    except AssertionUnavailable as exc:
        return Grade(assertion, False, 0.0, str(exc), isinstance(exc, JudgeUnavailable))
    if assertion.negated:
        passed, score = not passed, 1.0 - score
        claim = f"not ({reason.removeprefix('expected: ')})"
        reason = claim if passed else f"expected: {claim}"
    return Grade(assertion, passed, score, reason)


async def _check(
    a: Assertion, seen: Observed, judge: Judge, python_file: Any
) -> tuple[bool, float, str]:
    out, value, kind = seen.output, a.value, a.base_type
    if kind == "equals":
        return _plain(out == value, f"output {_short(out)} equals {_short(value)}")
    if kind == "contains":
        return _plain(value in out, f"output contains {_short(value)}")
    if kind == "icontains":
        return _plain(
            str(value).lower() in out.lower(), f"output contains {_short(value)} (any case)"
        )
    if kind == "contains-any":
        found = [v for v in value if v in out]
        return _plain(bool(found), f"output contains any of {value} (found {found})")
    if kind == "contains-all":
        missing = [v for v in value if v not in out]
        return _plain(not missing, f"output contains all of {value} (missing {missing})")
    if kind in ("icontains-any", "icontains-all"):
        lowered = out.lower()
        found = [v for v in value if v.lower() in lowered]
        wanted = "any" if kind == "icontains-any" else "all"
        ok = bool(found) if wanted == "any" else len(found) == len(value)
        return _plain(ok, f"output contains {wanted} of {value}, any case (found {found})")
    if kind == "starts-with":
        return _plain(out.startswith(value), f"output starts with {_short(value)}")
    if kind == "regex":
        return _plain(await regex_search(value, out), f"output matches /{value}/")
    if kind == "is-json":
        return _json([out], value, "output is JSON")
    if kind == "contains-json":
        return _json(_json_candidates(out), value, "output contains JSON")
    if kind == "cost":
        limit = a.threshold or 0.0
        return _plain(seen.cost_usd <= limit, f"cost ${seen.cost_usd:.6f} <= ${limit:g}")
    if kind == "latency":
        limit = a.threshold or 0.0
        return _plain(seen.latency_ms <= limit, f"latency {seen.latency_ms:.0f} ms <= {limit:g} ms")
    if kind == "similar":
        threshold = a.threshold if a.threshold is not None else DEFAULT_SIMILARITY
        similarity = await judge.similarity(out, value)
        ok = similarity >= threshold
        return ok, max(0.0, similarity), f"similarity {similarity:.3f} >= {threshold:g}"
    if kind == "llm-rubric":
        ok, why = await judge.rubric(out, value, seen.vars)
        return ok, float(ok), f"judge: {why}"
    if kind == "python":
        if python_file is None:
            raise AssertionUnavailable("python: the test file's directory is not known")
        file, function = python_file(a)
        return await run_python(Path(file), function, seen)
    raise AssertionUnavailable(f"unknown assertion type {a.type}")


def _plain(passed: bool, claim: str) -> tuple[bool, float, str]:
    return passed, float(passed), claim if passed else f"expected: {claim}"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json(candidates: list[str], schema: Any, claim: str) -> tuple[bool, float, str]:
    parsed_any = False
    problem = ""
    for text in candidates:
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        parsed_any = True
        if schema is None:
            return True, 1.0, claim
        error = jsonschema.validators.validator_for(schema)(schema).iter_errors(document)
        first = next(iter(error), None)
        if first is None:
            return True, 1.0, f"{claim}, valid against the schema"
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        problem = f" (at {where}: {first.message})"
    if not parsed_any:
        return False, 0.0, f"expected: {claim}"
    return False, 0.0, f"expected: {claim} valid against the schema{problem}"


def _json_candidates(text: str) -> list[str]:
    """Substrings of ``text`` that may be a JSON object or array: from each ``{``/``[`` to
    each matching closing bracket after it, longest first (bounded)."""
    out: list[str] = []
    for start, char in enumerate(text):
        if char not in "{[" or len(out) >= 200:
            continue
        close = "}" if char == "{" else "]"
        end = text.rfind(close)
        while end > start and len(out) < 200:
            out.append(text[start : end + 1])
            end = text.rfind(close, start, end)
    return out


REGEX_TIMEOUT_SECONDS = 1.0
REGEX_STRIKES = 3  # timeouts in a row after which a pattern fails at once ...
REGEX_COOLDOWN_SECONDS = 60.0  # ... for this long
_REGEX_LOOP = """
import json, re, sys
compiled = {}
for line in sys.stdin:
    pattern, text = json.loads(line)
    try:
        if pattern not in compiled:
            if len(compiled) > 256:
                compiled.clear()
            compiled[pattern] = re.compile(pattern)
        sys.stdout.write("1\\n" if compiled[pattern].search(text) else "0\\n")
    except Exception as exc:
        sys.stdout.write("E " + str(exc).replace("\\n", " ") + "\\n")
    sys.stdout.flush()
"""


class RegexSandbox:
    """``re.search`` in a child process, within a time limit.

    A regex assertion is written by a template's owner but runs on whatever a model wrote,
    and a pattern such as ``(a+)+$`` backtracks for hours on a few dozen characters;
    Python cannot interrupt a match (nor does ``re`` let go of the GIL), so on the event
    loop it would freeze the worker. The child matches one pair at a time; one that runs
    past ``limit`` is killed and replaced, and the assertion fails saying so. A pattern
    that timed out :data:`REGEX_STRIKES` times in a row fails at once for
    :data:`REGEX_COOLDOWN_SECONDS`: one tenant's pattern that backtracks on every output
    cannot hold the matcher every regex check of the worker shares.
    """

    def __init__(self, limit: float = REGEX_TIMEOUT_SECONDS) -> None:
        self._limit = limit
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._strikes: dict[str, int] = {}  # timeouts in a row, by pattern
        self._cooling: dict[str, float] = {}  # pattern -> when it may run again (monotonic)

    async def search(self, pattern: str, text: str) -> bool:
        until = self._cooling.get(pattern, 0.0)
        if time.monotonic() < until:
            raise AssertionUnavailable(
                f"regex /{pattern}/ timed out {REGEX_STRIKES} times in a row: failing at once "
                f"for {until - time.monotonic():.0f} s more"
            )
        found = await self._search(pattern, text)
        self._strikes.pop(pattern, None)
        return found

    def _strike(self, pattern: str) -> None:
        """One more timeout of ``pattern``; the last allowed in a row starts its cooldown."""
        if len(self._strikes) > 1000 or len(self._cooling) > 1000:
            self._strikes.clear()
            self._cooling = {p: t for p, t in self._cooling.items() if t > time.monotonic()}
        strikes = self._strikes.get(pattern, 0) + 1
        if strikes >= REGEX_STRIKES:
            self._cooling[pattern] = time.monotonic() + REGEX_COOLDOWN_SECONDS
            self._strikes.pop(pattern, None)
        else:
            self._strikes[pattern] = strikes

    async def _search(self, pattern: str, text: str) -> bool:
        async with self._lock:
            child = self._child
            if child is None or child.returncode is not None:
                child = self._child = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-I",
                    "-c",
                    _REGEX_LOOP,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            assert child.stdin is not None and child.stdout is not None
            try:
                child.stdin.write(orjson.dumps([pattern, text]) + b"\n")
                await asyncio.wait_for(child.stdin.drain(), self._limit)
                answer = await asyncio.wait_for(child.stdout.readline(), self._limit)
            except (TimeoutError, ConnectionError) as exc:
                await self.close()
                if isinstance(exc, TimeoutError):
                    self._strike(pattern)
                    raise AssertionUnavailable(
                        f"regex /{pattern}/ did not finish within {self._limit:g} s on an "
                        f"output of {len(text)} characters"
                    ) from None
                raise AssertionUnavailable(f"regex /{pattern}/: the matcher died") from None
        if answer.startswith(b"E "):
            raise AssertionUnavailable(f"regex /{pattern}/: {answer[2:].decode().strip()}")
        if answer.strip() not in (b"0", b"1"):
            await self.close()
            raise AssertionUnavailable(f"regex /{pattern}/: the matcher died")
        return answer.strip() == b"1"

    async def close(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()


_sandboxes: dict[asyncio.AbstractEventLoop, RegexSandbox] = {}


async def regex_search(pattern: str, text: str) -> bool:
    """Whether ``pattern`` matches somewhere in ``text``, in this event loop's
    :class:`RegexSandbox` (raises :class:`AssertionUnavailable` past its time limit)."""
    loop = asyncio.get_running_loop()
    for other in [k for k in _sandboxes if k.is_closed()]:
        stale = _sandboxes.pop(other)._child  # its loop is gone: just kill the process
        if stale is not None and stale.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                stale.kill()
    sandbox = _sandboxes.get(loop)
    if sandbox is None:
        sandbox = _sandboxes[loop] = RegexSandbox()
    return await sandbox.search(pattern, text)


_RUNNER = """
import importlib.util, json, sys
path, function = sys.argv[1], sys.argv[2]
payload = json.load(sys.stdin)
spec = importlib.util.spec_from_file_location("promptmill_check", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
result = getattr(module, function)(payload["output"], payload["context"])
if isinstance(result, bool):
    result = {"pass": result}
elif isinstance(result, (int, float)):
    result = {"pass": result >= 0.5, "score": float(result)}
json.dump(result, sys.stdout)
"""


async def run_python(
    file: Path, function: str, seen: Observed, limit: float = PYTHON_TIMEOUT_SECONDS
) -> tuple[bool, float, str]:
    """A python assertion's function, in a child process, within ``limit`` seconds."""
    context = {
        "vars": seen.vars,
        "tokens": {"prompt": seen.prompt_tokens, "completion": seen.completion_tokens},
        "cost_usd": seen.cost_usd,
        "latency_ms": seen.latency_ms,
    }
    payload = orjson.dumps({"output": seen.output, "context": context})
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",  # isolated: no user site, no PYTHON* environment
        "-c",
        _RUNNER,
        str(file),
        function,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=str(file.parent),
    )
    try:
        stdout, stderr = await asyncio.wait_for(child.communicate(payload), limit)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        await child.wait()
        raise AssertionUnavailable(
            f"python {file.name}:{function} did not finish within {limit:g} s"
        ) from None
    if child.returncode != 0:
        last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["(no message)"]
        raise AssertionUnavailable(f"python {file.name}:{function} raised: {last[0][:300]}")
    try:
        result = orjson.loads(stdout[:PYTHON_MAX_OUTPUT])
    except orjson.JSONDecodeError:
        raise AssertionUnavailable(
            f"python {file.name}:{function} returned something that is not JSON"
        ) from None
    if not isinstance(result, dict) or "pass" not in result:
        raise AssertionUnavailable(
            f"python {file.name}:{function} must return a bool, a number or a dict with 'pass'"
        )
    passed = bool(result["pass"])
    score = float(result.get("score", float(passed)))
    reason = str(result.get("reason") or f"{file.name}:{function} -> {passed}")
    return passed, min(1.0, max(0.0, score)), reason
