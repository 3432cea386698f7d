"""The wire contract: codec round-trips, job and template validation, error descriptions."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from schemas import (
    BatchManifest,
    ChatMessage,
    Completion,
    ErrorCode,
    Failure,
    LabelRecord,
    PromptJob,
    PromptmillError,
    SourcePosition,
    Template,
    TemplateRef,
    Usage,
    decode,
    encode,
)
from schemas.jobs import ModelParams
from schemas.validation import describe_validation_error

pytestmark = pytest.mark.timeout(10)

NOW = datetime(2025, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)


def _template() -> Template:
    return Template(
        name="summarize",
        description="One sentence.",
        model="small",
        params=ModelParams(temperature=0, max_tokens=24),
        variables=["text"],
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Summarize: {{ text }}", name="alice"),
        ],
        version=3,
        content_hash="ab" * 32,
        created_at=NOW,
    )


WIRE_RECORDS: list[BaseModel] = [
    PromptJob(
        job_id="b1:1",
        batch_id="b1",
        tenant="acme",
        custom_id="q1",
        template="summarize@staging",
        template_version=2,
        variables={"text": "hello", "nested": {"none": None, "list": [1, 2]}},
        model="small",
        params=ModelParams(temperature=0.5, stop=["\n"], seed=7),
        cache=True,
        metadata={"shop": "demo"},
        submitted_at=NOW,
        source_line=1,
    ),
    PromptJob(
        job_id="b1:2",
        batch_id="b1",
        messages=[ChatMessage(role="user", content="hi")],
    ),
    Completion(
        job_id="b1:1",
        batch_id="b1",
        tenant="acme",
        custom_id="q1",
        model="small",
        template="summarize",
        template_version=2,
        text="A short summary.",
        finish_reason="stop",
        usage=Usage(prompt_tokens=5, completion_tokens=4, total_tokens=9),
        cost_usd=0.00012,
        latency_ms=12.5,
        cached=True,
        attempts=2,
        response_id="chatcmpl-1",
        metadata={"shop": "demo"},
        created_at=NOW,
    ),
    Failure(
        job_id="b1:3",
        batch_id="b1",
        tenant="acme",
        code=ErrorCode.MISSING_VARIABLE,
        message="missing variable(s) text",
        attempts=0,
        payload='{"id": "q3"}',
        source=SourcePosition(file="in.jsonl", line=3),
        failed_at=NOW,
    ),
    Failure(job_id="x", code=ErrorCode.INVALID_JSON, message="bad", failed_at=NOW),
    _template(),
    LabelRecord(name="summarize", label="production", version=3, moved_at=NOW),
    BatchManifest(
        batch_id="b1",
        tenant="acme",
        source="in.jsonl",
        total=3,
        submitted=2,
        invalid=1,
        templates={"summarize@2": 2},
        started_at=NOW,
        submitted_at=NOW,
    ),
]


@pytest.mark.parametrize("record", WIRE_RECORDS, ids=lambda r: type(r).__name__)
def test_wire_records_round_trip_with_schema_version(record: BaseModel) -> None:
    data = encode(record)
    assert decode(data, type(record)) == record
    assert decode(data.decode(), type(record)) == record
    document = orjson.loads(data)
    assert document["schema_version"] == 1
    assert None not in document.values()


def test_encode_leaves_out_unset_fields_but_keeps_nulls_inside_dicts() -> None:
    job = PromptJob(job_id="b:1", batch_id="b", template="t", variables={"x": None})
    document = orjson.loads(encode(job))
    assert "custom_id" not in document
    assert "model" not in document
    assert document["variables"] == {"x": None}


def test_decode_rejects_a_record_of_another_kind() -> None:
    completion = encode(WIRE_RECORDS[2])
    with pytest.raises(ValidationError):
        decode(completion, Failure)


def test_decode_rejects_another_schema_version() -> None:
    document = orjson.loads(encode(WIRE_RECORDS[1]))
    document["schema_version"] = 2
    with pytest.raises(ValidationError) as exc:
        decode(orjson.dumps(document), PromptJob)
    assert exc.value.errors()[0]["loc"] == ("schema_version",)


def test_records_tell_their_kind() -> None:
    kinds = {type(r).__name__: orjson.loads(encode(r)).get("kind") for r in WIRE_RECORDS}
    assert kinds == {
        "PromptJob": None,
        "Completion": "completion",
        "Failure": "failure",
        "Template": "template",
        "LabelRecord": "label",
        "BatchManifest": "manifest",
    }
    assert _template().key == "version:summarize:3"
    assert LabelRecord(name="s", label="staging", version=1).key == "label:s:staging"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of 'template' or 'messages'"),
        (
            {"template": "t", "messages": [{"role": "user", "content": "x"}]},
            "exactly one of 'template' or 'messages'",
        ),
        ({"messages": []}, "'messages' must not be empty"),
        ({"template": "bad name"}, "invalid template name"),
    ],
)
def test_prompt_job_needs_exactly_one_of_template_or_messages(
    fields: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        PromptJob.model_validate({"job_id": "b:1", "batch_id": "b", **fields})
    assert message in str(exc.value)


def test_prompt_job_forbids_unknown_fields() -> None:
    with pytest.raises(ValidationError) as exc:
        PromptJob.model_validate(
            {"job_id": "b:1", "batch_id": "b", "template": "t", "temperature": 0}
        )
    assert exc.value.errors()[0]["loc"] == ("temperature",)


def test_prompt_job_template_ref_pins_the_resolved_version() -> None:
    job = PromptJob(job_id="b:1", batch_id="b", template="summarize@staging")
    assert job.template_ref() == TemplateRef(name="summarize", label="staging")
    pinned = job.model_copy(update={"template_version": 4})
    assert pinned.template_ref() == TemplateRef(name="summarize", version=4)
    raw = PromptJob(job_id="b:1", batch_id="b", messages=[ChatMessage(role="user", content="x")])
    assert raw.template_ref() is None


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("summarize", TemplateRef(name="summarize", label="production")),
        ("summarize@3", TemplateRef(name="summarize", version=3)),
        ("summarize@staging", TemplateRef(name="summarize", label="staging")),
        ("  my.tpl-v2_x@canary  ", TemplateRef(name="my.tpl-v2_x", label="canary")),
    ],
)
def test_template_ref_parse(ref: str, expected: TemplateRef) -> None:
    assert TemplateRef.parse(ref) == expected


def test_template_ref_str() -> None:
    assert str(TemplateRef.parse("summarize")) == "summarize@production"
    assert str(TemplateRef.parse("summarize@3")) == "summarize@3"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("", "invalid template name"),
        ("@3", "invalid template name"),
        ("two words", "invalid template name"),
        ("-leading-dash", "invalid template name"),
        ("a" * 129, "invalid template name"),
        ("name@-1", "invalid version or label"),
        ("name@a@b", "invalid version or label"),
        ("name@sta ging", "invalid version or label"),
    ],
)
def test_template_ref_parse_rejects_malformed(ref: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemplateRef.parse(ref)


def test_template_ref_parse_rejects_empty_selector() -> None:
    with pytest.raises(ValueError):
        TemplateRef.parse("summarize@")


def test_template_ref_parse_rejects_newline_in_name() -> None:
    with pytest.raises(ValueError):
        TemplateRef.parse("summarize\n@3")


def test_model_params_reject_unknown_keys_and_out_of_range() -> None:
    with pytest.raises(ValidationError) as unknown:
        ModelParams.model_validate({"temprature": 0.2})
    assert unknown.value.errors()[0]["type"] == "extra_forbidden"
    for bad in (-0.1, 2.01):
        with pytest.raises(ValidationError) as out_of_range:
            ModelParams.model_validate({"temperature": bad})
        assert out_of_range.value.errors()[0]["loc"] == ("temperature",)
    assert ModelParams(temperature=2).temperature == 2
    with pytest.raises(ValidationError):
        ModelParams.model_validate({"max_tokens": 0})


def test_model_params_merged_over() -> None:
    base = ModelParams(temperature=0, max_tokens=24, seed=1)
    job = ModelParams(temperature=0.7, stop="END")
    merged = job.merged_over(base)
    assert merged == ModelParams(temperature=0.7, max_tokens=24, seed=1, stop="END")
    assert merged.as_request() == {"temperature": 0.7, "max_tokens": 24, "seed": 1, "stop": "END"}
    assert ModelParams().merged_over(base) == base
    assert base.temperature == 0 and job.max_tokens is None  # inputs untouched


def test_describe_validation_error_invalid_json() -> None:
    with pytest.raises(ValidationError) as exc:
        decode(b'{"job_id": ', PromptJob)
    code, message = describe_validation_error(exc.value)
    assert code is ErrorCode.INVALID_JSON
    assert message.startswith("invalid JSON: ")
    assert "\n" not in message


def test_describe_validation_error_names_the_field_path() -> None:
    payload = {
        "job_id": "b:1",
        "batch_id": "b",
        "messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}],
        "params": {"temperature": 9},
    }
    with pytest.raises(ValidationError) as exc:
        decode(orjson.dumps(payload), PromptJob)
    code, message = describe_validation_error(exc.value)
    assert code is ErrorCode.SCHEMA_ERROR
    assert message.startswith("field messages.1.role: ")
    assert message.endswith("(+1 more)")
    assert "\n" not in message


def test_describe_validation_error_for_a_record_level_rule() -> None:
    with pytest.raises(ValidationError) as exc:
        decode(b'{"job_id": "b:1", "batch_id": "b"}', PromptJob)
    code, message = describe_validation_error(exc.value)
    assert code is ErrorCode.SCHEMA_ERROR
    assert message == "field (record): a job needs exactly one of 'template' or 'messages'"


def test_error_codes_are_the_closed_set() -> None:
    assert {c.value for c in ErrorCode} == {
        "invalid_json",
        "schema_error",
        "unknown_template",
        "missing_variable",
        "render_error",
        "prompt_too_long",
        "model_error",
        "model_timeout",
        "rate_limit_exhausted",
        "content_filter",
        "payload_too_large",
        "output_too_large",
        "cancelled",
        "budget_exceeded",
        "internal_error",
    }
    assert ErrorCode("model_timeout") is ErrorCode.MODEL_TIMEOUT


def test_promptmill_error_carries_code_and_retriable() -> None:
    plain = PromptmillError("boom")
    assert (plain.code, plain.retriable, plain.message) == (ErrorCode.INTERNAL_ERROR, False, "boom")
    custom = PromptmillError("slow", code=ErrorCode.MODEL_TIMEOUT, retriable=True)
    assert (custom.code, custom.retriable) == (ErrorCode.MODEL_TIMEOUT, True)
    assert PromptmillError.code is ErrorCode.INTERNAL_ERROR  # the class default is untouched
