"""Properties of the wire contract and the JSONL reader under hostile input (Hypothesis).

Hostile input is the normal case. Whatever arrives -- arbitrary bytes, JSON nested 10,000
deep, numbers no float can hold, NUL bytes, lone surrogates, megabyte strings -- a record
either validates or is refused with a stable code and a bounded one-line message: never an
unexpected exception, never ``internal_error``. And whatever a schema accepts, the codec
carries unchanged (``decode(encode(x)) == x``), so a record that validated once can always
be published and read again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from processors.cache import request_key
from processors.runtime.deadletters import About, DeadLetters
from processors.runtime.records import InRecord
from producers.reader import (
    DEFAULT_MAX_LINE_BYTES,
    RAW_PREFIX_BYTES,
    InputFormat,
    LineError,
    read_jobs,
)
from schemas import (
    ChatMessage,
    Completion,
    ErrorCode,
    Failure,
    Header,
    PromptJob,
    SourcePosition,
    Stage,
    Usage,
    decode,
    encode,
)
from schemas.codec import MAX_NESTING, loads
from schemas.jobs import INT32_MAX, ModelParams
from schemas.validation import describe_validation_error

pytestmark = pytest.mark.timeout(120)

HUGE = 10**400  # no float holds it; JSON and pydantic carry it exactly
MESSAGE_CHARS = 2000  # an error message is one line of at most this many characters
DEAD_LETTER_BYTES = 64 * 1024
CHAT_URL = "/v1/chat/completions"

FAST = settings(max_examples=60, deadline=None, database=None)
THOROUGH = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _assert_one_line(message: str) -> None:
    assert message, "an error message is never empty"
    assert len(message) <= MESSAGE_CHARS, f"{len(message):,} characters"
    assert message.splitlines() == [message], f"not one line: {message[:200]!r}"


def _refusal_or_job(data: bytes | str) -> PromptJob | tuple[ErrorCode, str]:
    """``data`` validated as a job: the job (which must survive the codec), or the code and
    message it is refused with (which must be well-formed)."""
    try:
        job = PromptJob.model_validate_json(data)
    except ValidationError as exc:
        code, message = describe_validation_error(exc)
        assert code in (ErrorCode.INVALID_JSON, ErrorCode.SCHEMA_ERROR)
        _assert_one_line(message)
        return code, message
    assert decode(encode(job), PromptJob) == job
    request_key("m", [], job.params.as_request(), job.tenant)  # the cache key can be made
    return job


def _refused(data: bytes | str) -> tuple[ErrorCode, str]:
    outcome = _refusal_or_job(data)
    assert isinstance(outcome, tuple), f"accepted: {outcome!r:.300}"
    return outcome


def _nested(depth: int, leaf: object = 0) -> object:
    """``leaf`` inside ``depth`` lists, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# -- strategies: valid records ---------------------------------------------------------

# Any text but lone surrogates, which no JSON encoder emits (see test_lone_surrogates_...).
texts = st.text()
template_refs = st.from_regex(
    r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,30}(@([0-9]{1,6}|[A-Za-z0-9][A-Za-z0-9_.\-]{0,12}))?",
    fullmatch=True,
)
big_ints = st.sampled_from([HUGE, -HUGE, -(2**63) - 1, 2**64, 2**64 + 1])  # beyond 64 bits
int64s = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what a job's values may hold
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | int64s | finite_floats | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=16,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
request_objects = st.dictionaries(  # integers in 64 bits: what a request to a model carries
    texts,
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | finite_floats | texts,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
        max_leaves=16,
    ),
    max_size=5,
)
# Whole-minute offsets: RFC 3339 has no seconds in an offset, and pydantic drops them (an old
# zone's local mean time, +00:19:32, comes back +00:19). Producers write UTC.
offsets = st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23)).map(
    lambda delta: timezone(timedelta(minutes=delta // timedelta(minutes=1)))
)
datetimes = st.datetimes(timezones=st.none() | st.just(UTC) | offsets)
chat_messages = st.builds(
    ChatMessage,
    role=st.sampled_from(["system", "developer", "user", "assistant", "tool"]),
    content=texts,
    name=st.none() | texts,
)
model_params = st.builds(
    ModelParams,
    temperature=st.none() | st.floats(0, 2),
    top_p=st.none() | st.floats(0, 1),
    max_tokens=st.none() | st.integers(1, INT32_MAX),
    max_completion_tokens=st.none() | st.integers(1, INT32_MAX),
    stop=st.none() | texts | st.lists(texts, max_size=4),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    presence_penalty=st.none() | st.floats(-2, 2),
    frequency_penalty=st.none() | st.floats(-2, 2),
    response_format=st.none() | request_objects,
    user=st.none() | texts,
)


@st.composite
def prompt_jobs(draw: st.DrawFn) -> PromptJob:
    by_template = draw(st.booleans())
    return PromptJob(
        job_id=draw(st.text(min_size=1, max_size=256)),
        batch_id=draw(st.text(min_size=1, max_size=128)),
        tenant=draw(st.text(min_size=1, max_size=128)),
        custom_id=draw(st.none() | st.text(max_size=512)),
        template=draw(template_refs) if by_template else None,
        template_version=draw(st.none() | st.integers(1, INT32_MAX)),
        variables=draw(json_objects),
        messages=None if by_template else draw(st.lists(chat_messages, min_size=1, max_size=3)),
        model=draw(st.none() | st.text(min_size=1, max_size=256)),
        params=draw(model_params),
        cache=draw(st.none() | st.booleans()),
        metadata=draw(json_objects),
        submitted_at=draw(st.none() | datetimes),
        source_line=draw(st.none() | st.integers(min_value=0, max_value=2**31 - 1)),
    )


ints = int64s
completions = st.builds(
    Completion,
    job_id=texts,
    batch_id=texts,
    tenant=texts,
    custom_id=st.none() | texts,
    model=texts,
    template=st.none() | texts,
    template_version=st.none() | ints,
    text=texts,
    finish_reason=st.none() | texts,
    usage=st.builds(Usage, prompt_tokens=ints, completion_tokens=ints, total_tokens=ints),
    cost_usd=finite_floats,
    latency_ms=finite_floats,
    cached=st.booleans(),
    attempts=ints,
    response_id=st.none() | texts,
    metadata=json_objects,
    created_at=datetimes,
)
failures = st.builds(
    Failure,
    job_id=texts,
    batch_id=st.none() | texts,
    tenant=st.none() | texts,
    custom_id=st.none() | texts,
    code=st.sampled_from(ErrorCode),
    message=texts,
    retriable=st.booleans(),
    attempts=ints,
    template=st.none() | texts,
    template_version=st.none() | ints,
    model=st.none() | texts,
    stage=st.sampled_from(Stage),
    payload=texts,
    payload_bytes=st.none() | st.integers(min_value=0),
    payload_sha256=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
    source=st.none()
    | st.builds(
        SourcePosition,
        file=st.none() | texts,
        line=st.none() | ints,
        topic=st.none() | texts,
        partition=st.none() | ints,
        offset=st.none() | ints,
    ),
    metadata=json_objects,
    failed_at=datetimes,
)


# -- 1. round trips ----------------------------------------------------------------------


@FAST
@given(job=prompt_jobs())
def test_every_valid_job_round_trips(job: PromptJob) -> None:
    assert decode(encode(job), PromptJob) == job


@FAST
@given(completion=completions)
def test_every_completion_round_trips(completion: Completion) -> None:
    assert decode(encode(completion), Completion) == completion


@FAST
@given(failure=failures)
def test_every_failure_round_trips(failure: Failure) -> None:
    assert decode(encode(failure), Failure) == failure


@FAST
@given(cost=st.floats(), latency=st.floats())
@example(cost=float("inf"), latency=0.0)
@example(cost=0.0, latency=float("nan"))
def test_a_completion_either_refuses_a_number_or_carries_it(cost: float, latency: float) -> None:
    """JSON has no inf or nan (pydantic would write ``null``, which no consumer could read
    back): a completion that is built round-trips, or it is not built."""
    try:
        completion = Completion(
            job_id="b:1",
            batch_id="b",
            tenant="t",
            model="m",
            text="",
            cost_usd=cost,
            latency_ms=latency,
        )
    except ValidationError:
        return
    assert decode(encode(completion), Completion) == completion


surrogates = st.characters(categories=["Cs"])
with_surrogate = st.tuples(texts, surrogates, texts).map("".join)


@FAST
@given(text=with_surrogate)
def test_lone_surrogates_are_refused_where_a_record_is_built(text: str) -> None:
    """No JSON can carry a lone surrogate, so no record holds one: building it is a schema
    error (not a record that only fails later, when it is encoded)."""
    attempts: list[dict[str, Any]] = [
        {"job_id": text, "batch_id": "b", "template": "t"},
        {"job_id": "b:1", "batch_id": "b", "template": "t", "variables": {"x": text}},
        {"job_id": "b:1", "batch_id": "b", "template": "t", "variables": {text: 1}},
        {"job_id": "b:1", "batch_id": "b", "template": "t", "metadata": {"a": [{"b": text}]}},
        {"job_id": "b:1", "batch_id": "b", "messages": [{"role": "user", "content": text}]},
    ]
    for fields in attempts:
        with pytest.raises(ValidationError) as refused:
            PromptJob.model_validate(fields)
        code, message = describe_validation_error(refused.value)
        assert code is ErrorCode.SCHEMA_ERROR
        _assert_one_line(message)
    with pytest.raises(ValidationError):
        Completion(job_id="b:1", batch_id="b", tenant="t", model="m", text=text)
    with pytest.raises(ValidationError):
        Failure(job_id="b:1", code=ErrorCode.MODEL_ERROR, message=text)


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"\\udc00\\ud800", b"\\ud800x"])
def test_a_lone_surrogate_escape_in_json_is_invalid_json(escape: bytes) -> None:
    data = b'{"job_id": "b:1", "batch_id": "b", "template": "t", "variables": {"x": "%s"}}'
    code, _ = _refused(data % escape)
    assert code is ErrorCode.INVALID_JSON
    job = _refusal_or_job(data % b"\\ud83d\\ude00")  # a surrogate pair is one character
    assert isinstance(job, PromptJob) and job.variables == {"x": "\U0001f600"}


# -- 2. arbitrary input: refused cleanly, or accepted and carried -------------------------


@dataclass(frozen=True)
class Raw:
    """Bytes spliced as they are into a generated document (valid JSON or not)."""

    data: bytes


def _dump(value: object) -> bytes:
    """JSON-ish text of ``value``, with :class:`Raw` spliced in, NaN and Infinity written
    as the non-standard literals, and lone surrogates as invalid UTF-8 bytes."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        items = (_dump(str(k)) + b":" + _dump(v) for k, v in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_dump(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


DEEP = b"[" * 10_000 + b"]" * 10_000
TOKENS = [
    b"1e400",
    b"-1e400",
    b"1e-400",
    str(HUGE).encode(),
    str(-HUGE).encode(),
    b"9" * 5000,
    b"NaN",
    b"Infinity",
    b"-Infinity",
    DEEP,
    b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    b'"\\u0000"',
    b'"a\x00b"',
    b"\x00",
    b'"\\ud800"',
    b'"\xff\xfe"',
    b"\xc3",
    b"tru",
    b'"../../etc"',
    b'"a@../../etc"',
    b'"' + b"x" * 1_000_000 + b'"',
    b"{}",
    b"[]",
    b"true",
    b"null",
    b"0",
    b"-1",
    b"2",
    b'""',
    b'"1"',
    b"1.5",
]
hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | big_ints
    | st.floats()
    | texts
    | st.sampled_from([token for token in TOKENS if len(token) < 100_000]).map(Raw),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
JOB_FIELDS = list(PromptJob.model_fields)
PARAM_FIELDS = list(ModelParams.model_fields)
MESSAGE_FIELDS = list(ChatMessage.model_fields)


@st.composite
def job_documents(draw: st.DrawFn) -> dict[str, object]:
    """A job-shaped document with hostile values in some (known or unknown) fields."""
    doc: dict[str, object] = {"job_id": "b:1", "batch_id": "b", "template": "t"}
    for name in draw(st.lists(st.sampled_from(JOB_FIELDS) | texts, max_size=4)):
        doc[name] = draw(hostile_values)
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(PARAM_FIELDS) | texts, max_size=3))
        doc["params"] = {name: draw(hostile_values) for name in names}
    if draw(st.booleans()):
        message: dict[str, object] = {"role": "user", "content": "hi"}
        for name in draw(st.lists(st.sampled_from(MESSAGE_FIELDS) | texts, max_size=3)):
            message[name] = draw(hostile_values)
        doc.pop("template", None)
        doc["messages"] = [message]
    for name in draw(st.lists(st.sampled_from(sorted(doc)), max_size=2)):
        doc.pop(name, None)
    return doc


@THOROUGH
@given(data=st.binary())
@example(data=b"")
@example(data=b"\xff\xfe\xfd")
@example(data=b'{"job_id": "b:1\xff", "batch_id": "b", "template": "t"}')
@example(data=DEEP)
@example(data=b"\x00" * 1000)
@example(data=b"[" * 1_000_000)
def test_arbitrary_bytes_are_a_job_or_a_clean_refusal(data: bytes) -> None:
    _refusal_or_job(data)


@THOROUGH
@given(doc=job_documents())
@example(doc={"job_id": "b:1", "batch_id": "b", "template": "t", "variables": {"x": Raw(DEEP)}})
@example(doc={"job_id": "b:1", "batch_id": "b", "template": "t", "variables": {"x": 1e400}})
@example(doc={"job_id": "b:1", "batch_id": "b", "template": "t", "metadata": {"x": Raw(b"NaN")}})
@example(doc={"job_id": "b:1", "batch_id": "b", "template": "t", "variables": {"x": _nested(150)}})
@example(doc={"job_id": "b:1", "batch_id": "b", "template": "t", "params": {"a\nb": 1}})
@example(doc={"job_id": "b:1", "batch_id": "b", "template": "t", "params": {"seed": 2**64}})
@example(
    doc={
        "job_id": "b:1",
        "batch_id": "b",
        "template": "t",
        "params": {"response_format": {"x": HUGE}},
    }
)
def test_hostile_job_documents_are_a_job_or_a_clean_refusal(doc: dict[str, object]) -> None:
    _refusal_or_job(_dump(doc))


FIELD_PATHS = (
    [(name,) for name in JOB_FIELDS]
    + [("params", name) for name in PARAM_FIELDS]
    + [("messages", name) for name in MESSAGE_FIELDS]
    + [("variables", "x"), ("metadata", "x", "y"), ("params", "response_format", "x")]
)


def _with_field(path: tuple[str, ...], value: Raw) -> dict[str, object]:
    """A valid job document with ``value`` at ``path`` (``messages``: in its one message)."""
    doc: dict[str, object] = {"job_id": "b:1", "batch_id": "b", "template": "t"}
    target = doc
    if path[0] == "messages" and len(path) > 1:
        del doc["template"]
        target = {"role": "user", "content": "hi"}
        doc["messages"] = [target]
        path = path[1:]
    for name in path[:-1]:
        inner: dict[str, object] = {}
        target[name] = inner
        target = inner
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize("token", TOKENS, ids=lambda token: repr(token[:12]))
def test_every_field_takes_every_hostile_token_cleanly(token: bytes) -> None:
    """Huge and non-finite numbers, 10,000-deep nesting, NUL bytes, invalid UTF-8, wrong
    types, traversal-looking template refs and megabyte strings in every field."""
    for path in FIELD_PATHS:
        _refusal_or_job(_dump(_with_field(path, Raw(token))))


@pytest.mark.parametrize("version", [b"0", b"2", b"-1", b'"1"', b"1.5", b"null", b"false"])
def test_an_unknown_schema_version_is_a_schema_error(version: bytes) -> None:
    doc = b'{"schema_version": %s, "job_id": "b:1", "batch_id": "b", "template": "t"}'
    code, message = _refused(doc % version)
    assert code is ErrorCode.SCHEMA_ERROR
    assert message.startswith("field schema_version: ")
    code, message = _refused(doc % str(HUGE).encode())
    assert (code, message.split(":")[0]) == (ErrorCode.SCHEMA_ERROR, "field schema_version")


@pytest.mark.parametrize(
    "ref",
    ["../../etc", "a/../../etc", "a@../..", "", " ", "@1", "a@", "a@1@2", "a\x00", "a@\n",
     "\uff41", "a@\u00b2", "a@\u0663", "a@-1", "a" * 129, "x" * 10_000],
)  # fmt: skip
def test_a_malformed_template_ref_is_a_schema_error(ref: str) -> None:
    doc = {"job_id": "b:1", "batch_id": "b", "template": ref}
    code, message = _refused(json.dumps(doc))
    assert code is ErrorCode.SCHEMA_ERROR
    assert "template" in message or "reference" in message, message


def test_messages_stay_one_bounded_line_for_megabyte_inputs() -> None:
    key = "\n".join(["x" * 1000] * 1000)  # a megabyte field name with a thousand newlines
    base: dict[str, object] = {"job_id": "b:1", "batch_id": "b", "template": "t"}
    cases: list[dict[str, object]] = [
        base | {key: 1},
        base | {"params": {key: 1}},
        {"job_id": "b:1", "batch_id": "b", "messages": [{"role": "user", "content": "", key: 1}]},
        base | {"job_id": key},
        base | {"template": key},
        base | {"submitted_at": key},
        base | {f"k{i}\u2028": i for i in range(100_000)},
        {"job_id": "b:1", "batch_id": "b", "template": "t@\n" + key[:200]},
    ]
    for doc in cases:
        _refused(json.dumps(doc))
    assert _refused(b'{"job_id": "' + b"x\n" * 500_000)[0] is ErrorCode.INVALID_JSON


# -- 3. extreme-but-valid values are carried; dead letters are bounded ---------------------


def test_extreme_but_valid_values_are_carried() -> None:
    extreme = {
        "min": -(2**63),
        "u64": 2**64 - 1,
        "tiny": 5e-324,
        "max": 1.7976931348623157e308,
        "nul": "a\x00b",
        "separators": "\u2028\u2029\x85\r\n",
        "emoji": "\U0001f600",
        "deep": _nested(MAX_NESTING - 1),
        "wide": list(range(10_000)),
        "long": "x" * 1_000_000,
    }
    job = PromptJob(
        job_id="b:1",
        batch_id="b",
        template="t",
        variables=extreme,
        metadata=extreme,
        params=ModelParams(response_format={"nested": _nested(MAX_NESTING - 2)}),
    )
    assert decode(encode(job), PromptJob) == job
    assert _refusal_or_job(encode(job)) == job


@FAST
@given(depth=st.integers(0, 400))
@example(depth=MAX_NESTING - 1)
@example(depth=MAX_NESTING)
@example(depth=10_000)
def test_nesting_is_carried_or_refused_when_the_job_is_built(depth: int) -> None:
    """No job is accepted that the codec cannot write or that a consumer cannot read back."""
    deep = {"x": _nested(depth)}
    for fields in ({"variables": deep}, {"metadata": deep}):
        try:
            job = PromptJob.model_validate(
                {"job_id": "b:1", "batch_id": "b", "template": "t"} | fields
            )
        except ValidationError as exc:
            assert depth >= MAX_NESTING
            assert describe_validation_error(exc)[0] is ErrorCode.SCHEMA_ERROR
        else:
            assert depth < MAX_NESTING
            assert decode(encode(job), PromptJob) == job


@pytest.mark.parametrize(
    "number", [0, -(2**63), 2**63, 2**64 - 1, -(2**63) - 1, 2**64, 10**400, -(10**4000)]
)
def test_integers_are_carried_if_they_fit_in_64_bits(number: int) -> None:
    """Every reader of the records (orjson in promptmill's own processors, most JSON
    libraries elsewhere) takes 64-bit integers; a larger one is a schema_error at once."""
    try:
        job = PromptJob(job_id="b:1", batch_id="b", template="t", metadata={"n": [number]})
    except ValidationError as exc:
        assert not -(2**63) <= number <= 2**64 - 1
        assert describe_validation_error(exc)[0] is ErrorCode.SCHEMA_ERROR
    else:
        assert -(2**63) <= number <= 2**64 - 1
        assert _refusal_or_job(encode(job)) == job
        decoded = loads(encode(job))  # orjson, as the tracker and reporting read records
        assert isinstance(decoded, dict) and decoded["metadata"]["n"] == [number]


def test_a_cycle_is_refused_when_the_job_is_built() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(ValidationError):
        PromptJob(job_id="b:1", batch_id="b", template="t", variables={"x": cycle})


payloads = (
    st.binary(max_size=600)
    | st.text().map(str.encode)
    | st.builds(
        lambda unit, n: unit * n, st.binary(min_size=1, max_size=4), st.integers(0, 300_000)
    )
)
in_records = st.builds(
    InRecord,
    topic=st.text(max_size=255),
    partition=st.integers(-1, 2**31 - 1),
    offset=st.integers(-1, 2**63 - 1),
    key=st.none() | payloads,
    value=st.none() | payloads,
    headers=st.lists(
        st.tuples(st.sampled_from([h.value for h in Header]) | texts, payloads), max_size=6
    ).map(tuple),
    timestamp_ms=st.integers(0, 2**63 - 1),
)
python_values = st.recursive(
    st.none() | st.booleans() | st.integers() | big_ints | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=16,
)
abouts = st.none() | st.builds(
    About,
    job_id=st.none() | st.text(min_size=1, max_size=256),
    batch_id=st.none() | st.text(min_size=1, max_size=128),
    tenant=st.none() | st.text(min_size=1, max_size=128),
    custom_id=st.none() | st.text(max_size=512),
    template=st.none() | template_refs,
    template_version=st.none() | st.integers(1, INT32_MAX),
    model=st.none() | st.text(min_size=1, max_size=256),
    metadata=st.dictionaries(texts, python_values, max_size=4)
    | st.integers(0, 300).map(lambda depth: {"deep": _nested(depth)})
    | st.integers(0, 100_000).map(lambda n: {"wide": "x" * n}),
)
messages = (
    texts
    | st.text(st.characters(codec="utf-8") | surrogates)
    | st.builds(lambda unit, n: unit * n, texts, st.integers(0, 50_000))
)


@THOROUGH
@given(
    record=in_records,
    code=st.sampled_from(ErrorCode),
    message=messages,
    about=abouts,
    stage=st.sampled_from(Stage),
)
@example(
    record=InRecord("t", 0, 0, None, None, tuple((h.value, "\u00b2".encode()) for h in Header)),
    code=ErrorCode.SCHEMA_ERROR,
    message="x",
    about=None,
    stage=Stage.PROMPT,
)
@example(
    record=InRecord("t", 0, 0, b"\xff" * 300, b"\x00" * 2_000_000, ()),
    code=ErrorCode.INTERNAL_ERROR,
    message="internal error: ValueError: \udcff\n" + "x" * 100_000,
    about=About(metadata={"big": HUGE, "inf": float("inf"), "deep": _nested(250)}),
    stage=Stage.MODERATION,
)
def test_a_dead_letter_of_anything_is_a_bounded_failure(
    record: InRecord, code: ErrorCode, message: str, about: About | None, stage: Stage
) -> None:
    outcome = DeadLetters("pm.failures", stage).outcome(record, code, message, about)
    assert len(outcome.value) < DEAD_LETTER_BYTES
    failure = decode(outcome.value, Failure)
    raw = record.value or b""
    assert failure.payload_bytes == len(raw)
    assert failure.payload_sha256 == hashlib.sha256(raw).hexdigest()
    assert (failure.code, failure.stage) == (code, stage)
    assert outcome.dead_letter and outcome.code == code.value
    assert outcome.key == failure.job_id.encode()
    assert sum(len(k) + len(v) for k, v in outcome.headers) < 4096


# -- 4. the JSONL reader --------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """A generated input line, and the job it must become when read in ``fmt``."""

    data: bytes
    fmt: InputFormat | None = None  # None: no expectation beyond the reader's contract
    expected: dict[str, Any] | None = None


@st.composite
def promptmill_lines(draw: st.DrawFn) -> Line:
    record: dict[str, Any] = {"variables": draw(json_objects)}
    if draw(st.booleans()):
        record["id"] = draw(st.text(max_size=40))
    if draw(st.booleans()):
        record["template"] = draw(template_refs)
    else:
        record["messages"] = [{"role": "user", "content": draw(texts)}]
    data = json.dumps(record, ensure_ascii=draw(st.booleans())).encode()
    expected = {
        "custom_id": record.get("id"),
        "template": record.get("template"),
        "variables": record["variables"],
    }
    return Line(data, InputFormat.PROMPTMILL, expected)


@st.composite
def batch_lines(draw: st.DrawFn) -> Line:
    custom_id = draw(st.text(max_size=40))
    content, model = draw(texts), draw(st.text(min_size=1, max_size=40))
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    record = {"custom_id": custom_id, "method": "POST", "url": CHAT_URL, "body": body}
    expected = {
        "custom_id": custom_id,
        "model": model,
        "messages": [ChatMessage(role="user", content=content)],
    }
    return Line(json.dumps(record).encode(), InputFormat.OPENAI_BATCH, expected)


@st.composite
def hostile_batch_lines(draw: st.DrawFn) -> Line:
    body: dict[str, object] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    record: dict[str, object] = {"custom_id": "c", "method": "POST", "url": CHAT_URL}
    for name in draw(st.lists(st.sampled_from(["custom_id", "method", "url"]), max_size=2)):
        record[name] = draw(hostile_values)
    for name in draw(st.lists(st.sampled_from(["model", "messages", "n", "temperature"]))):
        body[name] = draw(hostile_values)
    if draw(st.booleans()):
        part = draw(st.fixed_dictionaries({"type": hostile_values, "text": hostile_values}))
        body["messages"] = [{"role": "user", "content": [part, draw(hostile_values)]}]
    record["body"] = body
    return Line(_dump(record))


no_newline = st.binary().map(lambda data: data.replace(b"\n", b""))
lines = st.one_of(
    promptmill_lines(),
    batch_lines(),
    hostile_batch_lines(),
    job_documents().map(lambda doc: Line(_dump(doc).replace(b"\n", b"\\n"))),
    hostile_values.map(lambda value: Line(_dump(value).replace(b"\n", b" "))),
    no_newline.map(Line),
    st.sampled_from([b"", b" ", b"\t", b"\r", b" \r\r", b"\x0b\x0c"]).map(Line),
    st.builds(lambda unit, n: Line(unit * n), no_newline.filter(bool), st.integers(1, 600)),
)


@st.composite
def input_files(draw: st.DrawFn) -> tuple[bytes, list[Line]]:
    drawn: list[Line] = draw(st.lists(lines, max_size=12))
    endings: list[bytes] = draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=len(drawn)))
    content = b"".join(line.data + end for line, end in zip(drawn, endings, strict=False))
    if draw(st.booleans()) and drawn:  # no newline after the last line
        content = content.removesuffix(b"\n")
    return content, drawn


def _file_lines(content: bytes) -> list[tuple[bytes, bytes]]:
    """The file's lines: each without its ending (``\\n`` or ``\\r\\n``), and as written."""
    pieces = content.split(b"\n")
    written = [piece + b"\n" for piece in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])
    return [(line.removesuffix(b"\n").removesuffix(b"\r"), line) for line in written]


def _read(content: bytes, **options: Any) -> list[PromptJob | LineError]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "input.jsonl"
        path.write_bytes(content)
        return list(read_jobs(path, batch_id="b7", tenant="acme", **options))


def _check_reading(
    content: bytes, limit: int, fmt: InputFormat, template: str | None = None
) -> list[PromptJob | LineError]:
    items = _read(content, fmt=fmt, max_line_bytes=limit, template=template)
    expected = [
        (number, line, written)
        for number, (line, written) in enumerate(_file_lines(content), start=1)
        if line.strip() or len(line) > limit  # an over-long line is reported, even blank
    ]
    numbers = [item.line if isinstance(item, LineError) else item.source_line for item in items]
    assert numbers == [number for number, _, _ in expected]
    for item, (number, line, written) in zip(items, expected, strict=True):
        if isinstance(item, LineError):
            assert item.code in ErrorCode and item.code is not ErrorCode.INTERNAL_ERROR
            _assert_one_line(item.message)
            if len(line) > limit:  # read past, never held: measured as written (with ending)
                assert item.code is ErrorCode.PAYLOAD_TOO_LARGE
                whole, kept = written, min(RAW_PREFIX_BYTES, limit + 2)
            else:
                whole, kept = line, RAW_PREFIX_BYTES
            assert (item.size, item.sha256) == (len(whole), hashlib.sha256(whole).hexdigest())
            assert item.raw == whole[:kept].decode("utf-8", "replace")
            assert len(item.raw) <= RAW_PREFIX_BYTES
        else:
            assert len(line) <= limit
            assert (item.job_id, item.batch_id) == (f"b7:{number}", "b7")
            assert decode(encode(item), PromptJob) == item  # the producer can publish it
    return items


@THOROUGH
@given(
    file=input_files(),
    limit=st.integers(1, 400) | st.just(DEFAULT_MAX_LINE_BYTES),
    fmt=st.sampled_from(InputFormat),
    template=st.none() | template_refs,  # --template: a line without one is its variables
)
@example(
    file=(b'{"template": "t"}\r\r{"x": 1}\n{"template": "t"}\n', []),
    limit=17,
    fmt=InputFormat.PROMPTMILL,
    template=None,
)
@example(
    file=(b"x" * 11 + b"\r\n" + b" " * 50 + b"\n", []),
    limit=10,
    fmt=InputFormat.AUTO,
    template=None,
)
@example(
    file=(b'{"custom_id": "c", "url": "%s", "body": {"messages": 5}}' % CHAT_URL.encode(), []),
    limit=DEFAULT_MAX_LINE_BYTES,
    fmt=InputFormat.AUTO,
    template=None,
)
@example(
    file=(b'{"variables": {"x": %s}}\n' % (b"[" * 500 + b"]" * 500), []),
    limit=DEFAULT_MAX_LINE_BYTES,
    fmt=InputFormat.PROMPTMILL,
    template="t",
)
def test_the_reader_yields_one_job_or_clean_error_per_line(
    file: tuple[bytes, list[Line]], limit: int, fmt: InputFormat, template: str | None
) -> None:
    content, drawn = file
    items = _check_reading(content, limit, fmt, template)
    if fmt is InputFormat.AUTO:
        return
    # With the format given, every well-formed line of that format is its job, unchanged.
    by_number = {
        (item.line if isinstance(item, LineError) else item.source_line): item for item in items
    }
    for number, line in enumerate(drawn, start=1):
        if line.expected is None or len(line.data) > limit:
            continue
        item = by_number[number]
        if line.fmt is not fmt:  # a line of the other format: refused (unless --template
            assert template or isinstance(item, LineError)  # makes it variables)
            continue
        assert isinstance(item, PromptJob), item
        assert item.tenant == "acme"
        for name, value in line.expected.items():
            assert getattr(item, name) == value, name


def test_an_over_long_line_is_read_past_and_the_next_keeps_its_number() -> None:
    """A line far over the limit is read past in 1 MiB chunks, never held, and measured whole;
    a ``\\r\\n`` split across two chunks still ends it."""
    limit = 10
    first = b"{" + b"x" * (limit + 2 + (1 << 20) - 2)  # its \r ends the second chunk exactly
    content = first + b"\r\n" + b'{"template": "t"}\r\n' + b"y" * 3_000_000
    items = _check_reading(content, limit, InputFormat.PROMPTMILL)
    assert [type(item) for item in items] == [LineError, LineError, LineError]
    items = _check_reading(content, 20, InputFormat.PROMPTMILL)
    assert [type(item) for item in items] == [LineError, PromptJob, LineError]
