"""Test files of templates: ``NAME.tests.yaml`` beside ``NAME.yaml``.

A test file holds ``tests``, a list of cases, and an optional ``defaults`` block merged into
each (its ``vars`` under the case's, its ``assert`` before the case's, its ``threshold``
unless the case has one). A case gives the template's ``vars``, an optional
``description`` and ``assert``: assertions with promptfoo's ``type`` names, any of them
negated by a ``not-`` prefix, each with an optional ``weight`` (for the case's score) and
``online: true`` when production completions are checked with it too::

    defaults:
      assert:
        - {type: cost, threshold: 0.001}
    tests:
      - description: a happy review
        vars: {review: "Love it"}
        assert:
          - {type: icontains, value: positive}
          - {type: not-contains, value: negative, weight: 2}
          - {type: latency, threshold: 2000}
      - vars: {review: "Meh"}
        threshold: 0.5             # the weighted score that passes the case
        assert:
          - {type: regex, value: "^(neutral|negative)"}
          - {type: is-json}
          - {type: python, value: checks.py:short_enough}
          - {type: similar, value: "a neutral opinion", threshold: 0.8}
          - {type: llm-rubric, value: "says the review is lukewarm"}

Without a ``threshold`` a case passes when every assertion passes; with one, when the
weighted mean of the assertions' scores reaches it. Everything a file says is checked when
it is loaded (an unknown type, a regex that does not compile, a JSON Schema that is not
one, a python assertion without its file): the error names file, line and field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.jobs import JsonObject
from schemas.yaml_files import YamlFileError, line_of, load_yaml, validate_yaml

TESTS_SUFFIX = ".tests.yaml"

# the value each type needs: "text" a string, "texts" a list of strings, "schema" an
# optional JSON Schema, "python" FILE.py[:FUNCTION], "number" none (a threshold instead)
TYPES: dict[str, str] = {
    "equals": "text",
    "contains": "text",
    "icontains": "text",
    "contains-any": "texts",
    "contains-all": "texts",
    "icontains-any": "texts",
    "icontains-all": "texts",
    "starts-with": "text",
    "regex": "text",
    "is-json": "schema",
    "contains-json": "schema",
    "python": "python",
    "similar": "text",
    "llm-rubric": "text",
    "cost": "number",
    "latency": "number",
}
DEFAULT_SIMILARITY = 0.75
# python needs its file, which the workers do not have: it runs in `templates test` only
OFFLINE_ONLY = frozenset({"python"})


class Assertion(BaseModel):
    """One check of a completion."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str
    value: Any = None
    threshold: float | None = None
    weight: float = Field(default=1.0, ge=0)
    online: bool = False  # also checked on production completions (``--processor evals``)

    @property
    def negated(self) -> bool:
        return self.type.startswith("not-")

    @property
    def base_type(self) -> str:
        return self.type.removeprefix("not-")

    @model_validator(mode="after")
    def _checked(self) -> Assertion:
        kind = TYPES.get(self.base_type)
        if kind is None:
            raise ValueError(
                f"unknown assertion type {self.type!r} (types: {', '.join(TYPES)}, any with "
                "a not- prefix)"
            )
        value = self.value
        if kind == "text" and not isinstance(value, str):
            raise ValueError(f"{self.type} needs a string value")
        if kind == "texts" and not (
            isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"{self.type} needs a non-empty list of strings as its value")
        if kind == "schema" and value is not None:
            if not isinstance(value, dict):
                raise ValueError(f"{self.type}: the value, if any, is a JSON Schema (a mapping)")
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"{self.type}: not a valid JSON Schema: {exc.message}") from None
        if kind == "python" and not (isinstance(value, str) and _PYTHON.match(value)):
            raise ValueError("python needs a value FILE.py or FILE.py:FUNCTION")
        if kind == "number" and self.threshold is None:
            raise ValueError(f"{self.type} needs a threshold")
        if self.base_type == "regex":
            try:
                re.compile(str(value))
            except re.error as exc:
                raise ValueError(f"regex {value!r} does not compile: {exc}") from None
        similar = self.base_type == "similar" and self.threshold is not None
        if similar and not -1 <= (self.threshold or 0) <= 1:
            raise ValueError("similar: the threshold is a cosine similarity, -1 to 1")
        return self


_PYTHON = re.compile(r"^[^:]+\.py(:[A-Za-z_][A-Za-z0-9_]*)?$")


class CaseDefaults(BaseModel):
    """What every case of a file shares."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    vars: JsonObject = Field(default_factory=dict)
    assertions: list[Assertion] = Field(default_factory=list, alias="assert")
    threshold: float | None = Field(default=None, ge=0, le=1)


class TestCase(BaseModel):
    """One case: the template's variables, and what its completion must satisfy."""

    __test__ = False  # not a pytest class
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    description: str | None = None
    vars: JsonObject = Field(default_factory=dict)
    assertions: list[Assertion] = Field(default_factory=list, alias="assert")
    threshold: float | None = Field(default=None, ge=0, le=1)

    def merged(self, defaults: CaseDefaults) -> TestCase:
        return TestCase(
            description=self.description,
            vars=defaults.vars | self.vars,
            assertions=[*defaults.assertions, *self.assertions],
            threshold=self.threshold if self.threshold is not None else defaults.threshold,
        )


class TestFile(BaseModel):
    """A template's test file, as written."""

    __test__ = False
    model_config = ConfigDict(extra="forbid")

    defaults: CaseDefaults = Field(default_factory=CaseDefaults)
    tests: list[TestCase] = Field(min_length=1)


class LoadedTests(BaseModel):
    """A test file's cases, defaults merged in, with where they came from."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    template: str
    path: Path
    cases: list[TestCase]
    lines: list[int]  # each case's line in the file
    threshold: float | None = None  # the defaults' threshold (of the online checks too)

    def online(self) -> list[Assertion]:
        """The assertions marked ``online: true`` (from the defaults or any case), each
        once, in the order they first appear: production completions are graded by them."""
        seen: dict[str, Assertion] = {}
        for case in self.cases:
            for assertion in case.assertions:
                if assertion.online:
                    seen.setdefault(assertion.model_dump_json(), assertion)
        return list(seen.values())

    def python_file(self, assertion: Assertion) -> tuple[Path, str]:
        """A python assertion's file (relative to the test file) and function name."""
        file, _, function = str(assertion.value).partition(":")
        return (self.path.parent / file), function or "check"


def load_test_file(path: Path) -> LoadedTests:
    """``NAME.tests.yaml``, validated: errors name file, line and field."""
    if not path.name.endswith(TESTS_SUFFIX):
        raise YamlFileError(f"{path}: a test file is named NAME{TESTS_SUFFIX}")
    node, data = load_yaml(path, "a test file")
    parsed = validate_yaml(path, node, data, TestFile)
    cases, lines = [], []
    for index, case in enumerate(parsed.tests):
        merged = case.merged(parsed.defaults)
        if not merged.assertions:
            where = line_of(node, ["tests", index])
            raise YamlFileError(f"{path}:{where}: field tests.{index}: a case with no assert")
        cases.append(merged)
        lines.append(line_of(node, ["tests", index]))
    loaded = LoadedTests(
        template=path.name.removesuffix(TESTS_SUFFIX),
        path=path,
        cases=cases,
        lines=lines,
        threshold=parsed.defaults.threshold,
    )
    places: list[tuple[list[Any], list[Assertion]]] = [
        (["defaults", "assert"], parsed.defaults.assertions)
    ]
    places += [(["tests", i, "assert"], case.assertions) for i, case in enumerate(parsed.tests)]
    for loc, assertions in places:
        for position, assertion in enumerate(assertions):
            if assertion.online and assertion.base_type in OFFLINE_ONLY:
                where = line_of(node, [*loc, position, "online"])
                field = ".".join(str(p) for p in [*loc, position, "online"])
                raise YamlFileError(
                    f"{path}:{where}: field {field}: a {assertion.type} assertion cannot run "
                    "online (the workers do not have its file)"
                )
            file = loaded.python_file(assertion)[0] if assertion.base_type == "python" else None
            if file is not None and not file.is_file():
                where = line_of(node, [*loc, position, "value"])
                field = ".".join(str(p) for p in [*loc, position, "value"])
                raise YamlFileError(f"{path}:{where}: field {field}: no such file {file}")
    return loaded


def find_test_files(directory: Path) -> list[Path]:
    """Every test file below ``directory``."""
    return sorted(p for p in directory.rglob(f"*{TESTS_SUFFIX}") if p.is_file())
