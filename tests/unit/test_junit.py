"""``templates test --junit``: the XML validates against the JUnit schema CI systems read
(Jenkins' junit-10.xsd), with a passing case, a failing one and one that could not run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import xmlschema

from processors.assertions import CaseGrade, Grade
from producers.prompt_tests import CaseRun, TestRun
from promptmill.commands.prompt_tests import junit_xml
from promptmill.dev.harness import CACHE_DIR
from promptmill.dev.junit_schema import ensure_junit_schema
from schemas import Completion, ErrorCode, Failure
from schemas.prompt_tests import Assertion, TestCase


def _case(index: int, passed: bool | None) -> CaseRun:
    check = Assertion(type="contains", value="hello")
    case = CaseRun(
        "greet",
        "greet@2",
        index,
        TestCase(description=f"case <{index}> & co", assertions=[check]),
        line=4 + index,
    )
    if passed is None:  # the job failed: JUnit's <error>
        case.failures.append(
            Failure(job_id=f"j{index}", code=ErrorCode.MODEL_ERROR, message="the model said 500")
        )
        return case
    reason = "output contains 'hello'" if passed else "expected: output contains 'hello'"
    case.grades.append(
        CaseGrade(passed, float(passed), [Grade(check, passed, float(passed), reason)])
    )
    case.completions.append(
        Completion(
            job_id=f"j{index}", batch_id="b", tenant="t", model="m", text="hi", latency_ms=1234.5
        )
    )
    return case


def test_junit_xml_validates_against_the_junit_schema(tmp_path: Path) -> None:
    run = TestRun("b", [_case(0, True), _case(1, False), _case(2, None)], seconds=12.3456)
    written = tmp_path / "junit.xml"
    written.write_bytes(junit_xml(run))
    schema = xmlschema.XMLSchema(ensure_junit_schema(CACHE_DIR))
    schema.validate(written)  # raises, naming the element, if it does not
    suites = ET.parse(written).getroot()
    [suite] = suites.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    failure = cases[1].find("failure")
    assert failure is not None
    assert (failure.get("message") or "").endswith("expected: output contains 'hello'")
    error = cases[2].find("error")
    assert error is not None and error.get("type") == "model_error"
    del cases[0].attrib["name"]  # the schema does check: a case without a name is refused
    assert not schema.is_valid(ET.tostring(suites, encoding="unicode"))
