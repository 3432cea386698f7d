"""Reading input files into prompt jobs: promptmill JSONL, --template mode, OpenAI Batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from producers.reader import InputFormat, LineError, read_jobs
from schemas import ChatMessage, ErrorCode, PromptJob
from schemas.jobs import ModelParams

pytestmark = pytest.mark.timeout(10)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _write(tmp_path: Path, *lines: str | dict[str, Any]) -> Path:
    path = tmp_path / "input.jsonl"
    text = [line if isinstance(line, str) else orjson.dumps(line).decode() for line in lines]
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def _read(
    path: Path,
    fmt: InputFormat = InputFormat.AUTO,
    template: str | None = None,
) -> list[PromptJob | LineError]:
    return list(read_jobs(path, batch_id="b7", tenant="acme", fmt=fmt, template=template))


def _job(item: PromptJob | LineError) -> PromptJob:
    assert isinstance(item, PromptJob), item
    return item


def _error(item: PromptJob | LineError) -> LineError:
    assert isinstance(item, LineError), item
    return item


def test_promptmill_lines_become_jobs(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "id": "q1",
            "template": "summarize@2",
            "variables": {"text": "hello"},
            "model": "small",
            "params": {"temperature": 0, "max_tokens": 5},
            "cache": False,
            "metadata": {"shop": "demo"},
            "tenant": "other",
        },
        {"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
    )
    first, second = _read(path)

    job = _job(first)
    assert job.job_id == "b7:1"
    assert job.batch_id == "b7"
    assert job.custom_id == "q1"
    assert job.template == "summarize@2"
    assert job.variables == {"text": "hello"}
    assert job.model == "small"
    assert job.params == ModelParams(temperature=0, max_tokens=5)
    assert job.cache is False
    assert job.metadata == {"shop": "demo"}
    assert job.tenant == "other"
    assert job.source_line == 1
    assert job.submitted_at is not None

    raw = _job(second)
    assert raw.job_id == "b7:2"
    assert raw.tenant == "acme"  # the default tenant when the line names none
    assert raw.custom_id is None
    assert raw.messages == [ChatMessage(role="user", content="hi", name="bob")]
    assert raw.submitted_at == job.submitted_at


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "",
        '{"template": "a"}',
        "   ",
        "\t",
        '{"template": "b"}\r',
        "",
    )
    items = _read(path)
    assert [(_job(i).job_id, _job(i).source_line, _job(i).template) for i in items] == [
        ("b7:2", 2, "a"),
        ("b7:5", 5, "b"),
    ]


def test_malformed_lines_become_line_errors(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '{"template": "a"}',
        '{"template": "a", ',
        "[1, 2]",
        '"just a string"',
        {"template": "a", "variables": ["not", "a", "dict"]},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"template": "a", "params": {"temperature": 3}},
        {"template": "a", "temprature": 0},
        {"template": "a", "messages": [{"role": "user", "content": "x"}]},
        {"template": "not a name"},
        {"template": "a"},
    )
    items = _read(path)
    assert [_job(i).source_line for i in (items[0], items[-1])] == [1, 11]
    errors = [_error(i) for i in items[1:-1]]
    assert [e.line for e in errors] == list(range(2, 11))
    assert all("\n" not in e.message for e in errors)

    bad_json, array, string, variables, role, temperature, unknown, both, name = errors
    assert bad_json.code is ErrorCode.INVALID_JSON
    assert bad_json.message.startswith("invalid JSON: ")
    assert bad_json.raw == '{"template": "a", '
    for not_object in (array, string):
        assert not_object.code is ErrorCode.SCHEMA_ERROR
        assert not_object.message == "a line must be a JSON object"
    assert all(e.code is ErrorCode.SCHEMA_ERROR for e in errors[1:])
    assert variables.message.startswith("field variables: ")
    assert role.message.startswith("field messages.0.role: ")
    assert temperature.message.startswith("field params.temperature: ")
    assert unknown.message.startswith("field temprature: ")
    assert "exactly one of 'template' or 'messages'" in both.message
    assert "invalid template name" in name.message


def test_invalid_utf8_is_an_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(b'{"template": "a"}\n{"template": "\xff"}\n')
    ok, bad = _read(path)
    assert _job(ok).job_id == "b7:1"
    assert _error(bad).code is ErrorCode.INVALID_JSON
    assert _error(bad).line == 2


def test_template_mode_lines_are_variables(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {"text": "first", "lang": "en"},
        {"id": "q2", "text": "second", "metadata": {"k": 1}, "params": {"seed": 3}},
        {"variables": {"text": "third"}, "id": "q3"},
        {"template": "other@staging", "variables": {"x": 1}},
        {"messages": [{"role": "user", "content": "raw"}]},
    )
    first, second, third, other, raw = (_job(i) for i in _read(path, template="summarize@4"))
    assert (first.template, first.variables) == ("summarize@4", {"text": "first", "lang": "en"})
    assert second.custom_id == "q2"
    assert second.variables == {"text": "second"}
    assert second.metadata == {"k": 1}
    assert second.params == ModelParams(seed=3)
    assert (third.template, third.variables, third.custom_id) == (
        "summarize@4",
        {"text": "third"},
        "q3",
    )
    assert (other.template, other.variables) == ("other@staging", {"x": 1})
    assert raw.template is None and raw.messages is not None


def test_without_template_mode_a_bare_variables_line_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path, {"text": "first"})
    (error,) = _read(path)
    assert _error(error).code is ErrorCode.SCHEMA_ERROR
    assert _error(error).message.startswith("field text: ")


def test_openai_batch_lines(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "custom_id": "request-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Be nice."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Hello "},
                            {"type": "text", "text": "world!"},
                        ],
                    },
                ],
                "max_tokens": 16,
                "temperature": 0,
                "n": 1,
            },
        },
    )
    (item,) = _read(path, fmt=InputFormat.OPENAI_BATCH)
    job = _job(item)
    assert job.job_id == "b7:1"
    assert job.custom_id == "request-1"
    assert job.model == "gpt-4o-mini"
    assert job.template is None
    assert job.messages == [
        ChatMessage(role="system", content="Be nice."),
        ChatMessage(role="user", content="Hello world!"),
    ]
    assert job.params == ModelParams(max_tokens=16, temperature=0)
    assert job.tenant == "acme"


def _batch_line(custom_id: str, **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    return line | overrides


def test_openai_batch_refusals(tmp_path: Path) -> None:
    image = {
        "model": "m",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            }
        ],
    }
    path = _write(
        tmp_path,
        _batch_line("ok"),
        _batch_line("img", body=image),
        _batch_line("emb", url="/v1/embeddings", body={"model": "e", "input": "x"}),
        _batch_line("get", method="GET"),
        _batch_line("empty", body={"model": "m", "messages": []}),
        _batch_line(
            "n", body={"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}
        ),
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
    )
    ok, *errors = _read(path)
    assert _job(ok).custom_id == "ok"
    line_errors = [_error(e) for e in errors]
    img, emb, get, empty, n, no_id = line_errors
    assert [e.line for e in line_errors] == [2, 3, 4, 5, 6, 7]
    assert all(e.code is ErrorCode.SCHEMA_ERROR for e in line_errors)
    assert img.message == (
        "field body.messages.0.content: only text parts are supported, got image_url"
    )
    assert emb.message == (
        "field url: only POST /v1/chat/completions is supported, got POST /v1/embeddings"
    )
    assert get.message.startswith("field url: only POST /v1/chat/completions is supported")
    assert empty.message == "field body.messages: a chat request needs messages"
    assert n.message.startswith("field n: ")
    assert no_id.message.startswith("field custom_id: ")
    assert all("\n" not in e.message for e in line_errors)


def test_example_openai_batch_file(tmp_path: Path) -> None:
    first, second, third = _read(EXAMPLES / "openai-batch.jsonl")
    assert _job(first).custom_id == "request-1"
    assert _job(second).messages == [
        ChatMessage(role="system", content="You are an unhelpful assistant."),
        ChatMessage(role="user", content="Hello world!"),
    ]
    assert _error(third).message.startswith("field url: ")


def test_auto_detects_the_format_from_the_first_json_line(tmp_path: Path) -> None:
    batch = _write(tmp_path, "", "not json", _batch_line("r1"), _batch_line("r2"))
    items = _read(batch)
    assert _error(items[0]).code is ErrorCode.INVALID_JSON
    assert [_job(i).custom_id for i in items[1:]] == ["r1", "r2"]

    promptmill = tmp_path / "promptmill.jsonl"
    promptmill.write_text(
        '{"id": "p1", "template": "a"}\n' + orjson.dumps(_batch_line("r")).decode()
    )
    job, error = list(read_jobs(promptmill, batch_id="b", tenant="t"))
    assert _job(job).custom_id == "p1"
    # the file was detected as promptmill, so a batch-shaped line is a schema error there
    assert _error(error).message.startswith("field ")


def test_explicit_promptmill_format_does_not_read_batch_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, _batch_line("r1"))
    (error,) = _read(path, fmt=InputFormat.PROMPTMILL)
    assert _error(error).code is ErrorCode.SCHEMA_ERROR


def test_example_jobs_file_reads_its_deliberate_bad_lines() -> None:
    items = _read(EXAMPLES / "jobs.jsonl")
    errors = {e.line: e.code for e in items if isinstance(e, LineError)}
    assert errors == {
        18: ErrorCode.INVALID_JSON,
        94: ErrorCode.INVALID_JSON,
        97: ErrorCode.SCHEMA_ERROR,
        151: ErrorCode.INVALID_JSON,
    }
    jobs = [i for i in items if isinstance(i, PromptJob)]
    assert len(jobs) + len(errors) == len(items) > 100
    assert len({j.job_id for j in jobs}) == len(jobs)
