"""The streamed validation of a batch input file, chunk boundaries and hostile lines included."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from producers.serve.upload import UploadCheck, UploadRefused


def line(i: int, **body: object) -> bytes:
    request = {
        "custom_id": f"r{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"q{i}"}], **body},
    }
    return orjson.dumps(request)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def check(data: bytes, size: int = 7, **limits: object) -> tuple[UploadCheck, bytes]:
    options = {"max_bytes": 10**9, "max_requests": 100, "max_line_bytes": 4096, "tenant": "t"}
    validator = UploadCheck(**(options | limits))  # type: ignore[arg-type]
    passed = b"".join([c async for c in validator.passing(chunked(data, size))])
    return validator, passed


@pytest.mark.parametrize("size", [1, 3, 64, 1 << 20])
async def test_lines_cut_anywhere_are_read_whole_and_pass_unchanged(size: int) -> None:
    data = b"\r\n".join(line(i) for i in range(5)) + b"\n\n"  # CRLF, a blank line at the end
    validator, passed = await check(data, size)
    assert passed == data
    assert (validator.requests, validator.error_count, validator.size) == (5, 0, len(data))


async def test_each_bad_line_is_named_with_its_number_and_a_stable_code() -> None:
    rows = [
        line(0),
        b"{not json",
        line(0),  # the same custom_id again
        line(3) .replace(b"/v1/chat/completions", b"/v1/embeddings"),
        b"[1, 2]",
        b'{"method": "POST", "url": "/v1/chat/completions", "body": {}}',
        b"x" * 10_000,  # over the line limit, no newline inside: counted past
        line(7),
    ]  # fmt: skip
    validator, _ = await check(b"\n".join(rows) + b"\n", size=5)
    found = [(e.line, e.code) for e in validator.errors]
    assert found == [
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_request"),
        (5, "invalid_request"),
        (6, "invalid_request"),
        (7, "line_too_large"),
    ]
    assert validator.requests == 7  # the over-long line is no request; every other is
    assert "10,000 bytes" in validator.errors[5].message
    assert all(e.message and len(e.message) < 1100 for e in validator.errors)


async def test_an_over_long_last_line_without_newline_is_an_error_too() -> None:
    validator, _ = await check(line(0) + b"\n" + b"y" * 9000, size=1000)
    assert [(e.line, e.code) for e in validator.errors] == [(2, "line_too_large")]


async def test_hard_limits_stop_the_stream_at_once() -> None:
    with pytest.raises(UploadRefused) as many:
        await check(b"\n".join(line(i) for i in range(12)), max_requests=10)
    assert (many.value.status, many.value.error_code) == (400, "too_many_requests")
    assert "line 11" in many.value.message
    with pytest.raises(UploadRefused) as big:
        await check(b"\n".join(line(i) for i in range(50)), max_bytes=500)
    assert (big.value.status, big.value.error_code) == (413, "file_too_large")
    with pytest.raises(UploadRefused) as empty:
        await check(b"\n \n\n")
    assert empty.value.error_code == "empty_file"


async def test_the_key_model_allow_list_binds_the_models_named() -> None:
    rows = [line(0), line(1, model="gpt-4o"), line(2).replace(b'"model":"m",', b"")]
    validator, _ = await check(b"\n".join(rows), models=["m"])
    assert [(e.line, e.code, e.param) for e in validator.errors] == [
        (2, "model_not_allowed", "body.model"),
        (3, "model_not_allowed", "body.model"),  # no model: the default is not on the list
    ]
    template = orjson.dumps(
        {
            "custom_id": "t",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"template": "summarize@2", "variables": {"text": "x"}},
        }
    )
    validator, _ = await check(template, models=["m"])
    assert validator.errors == []  # a template's own model is not known at upload
