"""Templates: the in-memory store, rendering in the sandbox, and template files."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from processors.templates.pool import PoolConfig, RenderPool
from processors.templates.render import MissingVariable, Renderer, RenderError
from producers.templates import TemplateFileError, load_template_dir, load_template_file
from schemas import ChatMessage, ErrorCode, LabelRecord, Template, TemplateRef, encode
from schemas.templates import TemplateBody, canary_draw
from topics.templates import TemplateStore, UnknownTemplate

pytestmark = pytest.mark.timeout(10)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "templates"


def _template(
    version: int,
    *contents: str,
    name: str = "summarize",
    variables: list[str] | None = None,
) -> Template:
    messages = [ChatMessage(role="user", content=c) for c in contents or ("v{{ n }}",)]
    return _hashed(name=name, version=version, variables=variables or [], messages=messages)


def _hashed(**fields: Any) -> Template:
    body = TemplateBody.model_validate({k: v for k, v in fields.items() if k != "version"})
    return Template(**fields, content_hash=body.compute_hash())


def _put(store: TemplateStore, record: Template | LabelRecord) -> None:
    store.apply(record.key.encode(), encode(record))


@pytest.fixture
def store() -> TemplateStore:
    store = TemplateStore()
    for version in (1, 2, 3):
        _put(store, _template(version))
    _put(store, LabelRecord(name="summarize", label="production", version=2))
    _put(store, LabelRecord(name="summarize", label="staging", version=3))
    _put(store, _template(1, name="haiku"))
    return store


def test_store_resolves_names_versions_and_labels(store: TemplateStore) -> None:
    assert store.resolve("summarize").version == 2  # the production label
    assert store.resolve("summarize@production").version == 2
    assert store.resolve("summarize@staging").version == 3
    assert store.resolve("summarize@1").version == 1
    assert store.resolve(TemplateRef(name="summarize", version=3)).version == 3
    assert store.names() == ["haiku", "summarize"]
    assert [t.version for t in store.versions("summarize")] == [1, 2, 3]
    assert store.labels("summarize") == {"production": 2, "staging": 3}
    latest = store.latest("summarize")
    assert latest is not None and latest.version == 3
    assert store.latest("nope") is None


def test_a_label_record_moves_the_label(store: TemplateStore) -> None:
    _put(store, LabelRecord(name="summarize", label="production", version=1))
    assert store.resolve("summarize").version == 1
    _put(store, LabelRecord(name="summarize", label="production", version=3))
    assert store.resolve("summarize").version == 3


def test_unknown_name_label_or_version(store: TemplateStore) -> None:
    with pytest.raises(UnknownTemplate) as name:
        store.resolve("sumarise")
    assert name.value.message == "unknown template 'sumarise'"
    assert name.value.code is ErrorCode.UNKNOWN_TEMPLATE
    assert not name.value.retriable

    with pytest.raises(UnknownTemplate) as label:
        store.resolve("summarize@canary")
    assert label.value.message == (
        "template 'summarize' has no label 'canary' "
        "(labels: production, staging; versions: 1, 2, 3)"
    )
    with pytest.raises(UnknownTemplate) as no_production:
        store.resolve("haiku")
    assert "has no label 'production' (labels: none; versions: 1)" in no_production.value.message

    with pytest.raises(UnknownTemplate) as version:
        store.resolve("summarize@99")
    assert version.value.message == "template 'summarize' has no version 99"


def test_tombstones_remove_versions_and_labels(store: TemplateStore) -> None:
    store.apply(b"label:summarize:staging", None)
    with pytest.raises(UnknownTemplate, match="no label 'staging'"):
        store.resolve("summarize@staging")
    store.apply(b"version:summarize:2", None)
    assert [t.version for t in store.versions("summarize")] == [1, 3]
    with pytest.raises(UnknownTemplate, match="has no version 2"):
        store.resolve("summarize")  # production still points at the removed version
    for version in (1, 3):
        store.apply(f"version:summarize:{version}".encode(), None)
    with pytest.raises(UnknownTemplate, match="unknown template 'summarize'"):
        store.resolve("summarize@1")
    # tombstones for things never seen, or with odd keys, are harmless
    store.apply(b"version:ghost:1", None)
    store.apply(b"label:ghost:x", None)
    store.apply(b"version:haiku:notanumber", None)
    store.apply(None, None)
    assert store.versions("summarize") == []
    assert store.latest("summarize") is None
    assert store.resolve("haiku@1").name == "haiku"


def test_bad_records_are_skipped(store: TemplateStore, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="topics.templates"):
        store.apply(b"version:summarize:4", b'{"kind": "template"}')
        store.apply(b"label:summarize:production", b'{"name": "summarize"}')
        store.apply(b"something:else", b"{}")
        store.apply(b"\xff\xfe:summarize:1", b"{}")  # a key that is not UTF-8
        store.apply(b"version:summarize:5", b"\x00\x9f not json")
        moved = _template(6)
        store.apply(b"version:summarize:7", encode(moved))  # key and value disagree
        forged = _template(8).model_copy(update={"content_hash": "0" * 64})
        store.apply(forged.key.encode(), encode(forged))  # the hash is not its content's
    assert store.resolve("summarize").version == 2
    assert [t.version for t in store.versions("summarize")] == [1, 2, 3]
    assert sum("ignoring bad templates record" in r.message for r in caplog.records) == 7
    assert store.skipped == 7
    _put(store, _template(9))  # and the next good record still applies
    assert store.resolve("summarize@9").version == 9


@pytest.fixture(scope="module")
async def renderer() -> AsyncIterator[Renderer]:
    async with Renderer(RenderPool(PoolConfig(processes=2, timeout=5))) as renderer:
        yield renderer


async def test_render_fills_variables_per_message(renderer: Renderer) -> None:
    template = _hashed(
        name="t",
        version=1,
        variables=["text"],
        messages=[
            ChatMessage(role="system", content="Be brief.", name="rules"),
            ChatMessage(
                role="user", content="Summarize{% if lang %} in {{ lang }}{% endif %}: {{ text }}"
            ),
        ],
    )
    rendered = await renderer.render(template, {"text": "hello", "lang": "French"}, 100)
    assert rendered == [
        ChatMessage(role="system", content="Be brief.", name="rules"),
        ChatMessage(role="user", content="Summarize in French: hello"),
    ]


async def test_render_undefined_variable_is_missing_variable(renderer: Renderer) -> None:
    template = _template(1, "{{ text }} and {{ topic }}", variables=["text"])
    with pytest.raises(MissingVariable) as exc:
        await renderer.render(template, {"text": "x"}, 100)
    assert exc.value.code is ErrorCode.MISSING_VARIABLE
    assert "'topic' is undefined" in exc.value.message
    assert "summarize@1" in exc.value.message


async def test_render_declared_variables_are_required(renderer: Renderer) -> None:
    template = _template(4, "static", variables=["text", "lang", "tone"])
    with pytest.raises(MissingVariable) as exc:
        await renderer.render(template, {"lang": "en"}, 100)
    assert exc.value.message == "missing variable(s) text, tone for template summarize@4"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ text.__class__.__base__.__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ text.format_map({}) if false else ''.__class__ }}",
    ],
)
async def test_render_sandbox_blocks_unsafe_access(renderer: Renderer, source: str) -> None:
    with pytest.raises(RenderError) as exc:
        await renderer.render(_template(1, source), {"text": "x"}, 100)
    assert exc.value.code is ErrorCode.RENDER_ERROR
    assert "unsafe" in exc.value.message


async def test_render_runtime_error_is_render_error(renderer: Renderer) -> None:
    with pytest.raises(RenderError) as exc:
        await renderer.render(_template(1, "{{ n / 0 }}"), {"n": 1}, 100)
    assert exc.value.message == "template summarize@1: ZeroDivisionError: division by zero"
    with pytest.raises(RenderError, match="TypeError"):
        await renderer.render(_template(2, "{{ n + 'a' }}"), {"n": 1}, 100)


async def test_render_syntax_error_is_render_error(renderer: Renderer) -> None:
    with pytest.raises(RenderError, match="template summarize@1: "):
        await renderer.render(_template(1, "{{ n "), {"n": 1}, 100)


# --- template files -------------------------------------------------------------------

VALID = """\
name: summarize
description: One sentence.
params:
  temperature: 0
  max_tokens: 24
variables: [text]
messages:
  - role: system
    content: Be brief.
  - role: user
    content: "Summarize: {{ text }}"
"""


def _file(directory: Path, text: str, name: str = "t.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(TemplateFileError) as exc:
        load_template_file(path)
    assert "\n" not in exc.value.message
    return exc.value.message


def test_load_valid_template_file(tmp_path: Path) -> None:
    path = _file(tmp_path, VALID)
    loaded = load_template_file(path)
    assert loaded.path == path
    body = loaded.body
    assert (body.name, body.description, body.variables) == ("summarize", "One sentence.", ["text"])
    assert body.params.max_tokens == 24
    assert [m.role for m in body.messages] == ["system", "user"]
    assert (
        body.compute_hash()
        == load_template_file(_file(tmp_path, VALID, "b.yaml")).body.compute_hash()
    )


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "name: x\nmessages:\n  - role: user\n    content: [unclosed\n")
    message = _error(path)
    assert message.startswith(f"{path}:")
    assert "invalid YAML" in message
    line = int(message.removeprefix(f"{path}:").split(":")[0])
    assert line in (4, 5)


def test_yaml_tab_indent_error_line(tmp_path: Path) -> None:
    path = _file(tmp_path, "name: x\ndescription: y\n\tbad: tab\n")
    assert _error(path).startswith(f"{path}:3: invalid YAML")


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        (VALID.replace("role: user", "role: robot"), 10, "messages.1.role"),
        (VALID.replace("temperature: 0", "temperature: 5"), 4, "params.temperature"),
        (VALID.replace("max_tokens: 24", "max_tokns: 24"), 5, "params.max_tokns"),
        (VALID.replace("name: summarize", "name: two words"), 1, "name"),
        (VALID.replace("variables: [text]", "variables: text"), 6, "variables"),
        (VALID.replace("description: One sentence.", "colour: blue"), 2, "colour"),
        ("name: x\nmessages: []\n", 2, "messages"),
        ("name: x\ndescription: no messages\n", 1, "messages"),
    ],
)
def test_schema_error_names_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str
) -> None:
    path = _file(tmp_path, text)
    assert _error(path).startswith(f"{path}:{line}: field {field}: ")


def test_bad_role_on_line_seven(tmp_path: Path) -> None:
    text = (
        "# a comment\n"
        "name: review\n"
        "variables: [review]\n"
        "messages:\n"
        "  - role: user\n"
        "    content: '{{ review }}'\n"
        "  - role: wizard\n"
        "    content: hi\n"
    )
    path = _file(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}:7: field messages.1.role: Input should be ")


def test_not_a_mapping(tmp_path: Path) -> None:
    for text in ("- a\n- b\n", "", "just text\n"):
        path = _file(tmp_path, text)
        assert _error(path) == f"{path}:1: a template file must be a YAML mapping"


def test_jinja_syntax_error_names_the_content_line(tmp_path: Path) -> None:
    text = VALID.replace('"Summarize: {{ text }}"', '"Summarize: {{ text }"')
    path = _file(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}:11: field messages.1.content: Jinja syntax error: ")

    block = VALID.replace(
        '    content: "Summarize: {{ text }}"\n',
        "    content: |\n      Summarize:\n      {% if text %}{{ text }}\n",
    )
    path = _file(tmp_path, block, "block.yaml")
    assert _error(path).startswith(f"{path}:11: field messages.1.content: Jinja syntax error: ")


def test_load_template_dir(tmp_path: Path) -> None:
    _file(tmp_path, VALID, "a.yaml")
    _file(tmp_path, VALID.replace("summarize", "haiku"), "nested/b.yml")
    _file(tmp_path, "not a template", "notes.txt")
    loaded = load_template_dir(tmp_path)
    assert [f.body.name for f in loaded] == ["summarize", "haiku"]


def test_load_template_dir_refuses_duplicate_names(tmp_path: Path) -> None:
    first = _file(tmp_path, VALID, "a.yaml")
    second = _file(tmp_path, VALID, "b.yaml")
    with pytest.raises(TemplateFileError) as exc:
        load_template_dir(tmp_path)
    assert exc.value.message == (f"{second}: template name 'summarize' also used by {first}")


def test_load_template_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(TemplateFileError, match="not a directory"):
        load_template_dir(tmp_path / "missing")
    with pytest.raises(TemplateFileError, match=r"no \*\.yaml template files"):
        load_template_dir(tmp_path)
    bad = _file(tmp_path, "name: [\n", "bad.yaml")
    with pytest.raises(TemplateFileError, match=f"^{bad}:"):
        load_template_dir(tmp_path)


async def test_example_templates_load_and_render(renderer: Renderer) -> None:
    loaded = load_template_dir(EXAMPLES)
    names = sorted(f.body.name for f in loaded)
    assert names == ["classify", "haiku", "moderate", "summarize"]
    variables: dict[str, dict[str, Any]] = {
        "classify": {"review": "Great."},
        "haiku": {"topic": "rain", "mood": "calm"},
        "moderate": {"text": "A completion to judge."},
        "summarize": {"text": "Long text."},
    }
    syntax = SandboxedEnvironment()
    for item in loaded:
        template = Template(
            **item.body.model_dump(), version=1, content_hash=item.body.compute_hash()
        )
        messages = await renderer.render(template, variables[item.body.name], 1000)
        assert messages[-1].role == "user"
        assert all("{{" not in m.content for m in messages)
        assert set(item.body.variables) <= set().union(
            *(meta.find_undeclared_variables(syntax.parse(m.content)) for m in item.body.messages)
        )


def test_a_canary_draw_is_stable_and_uniform() -> None:
    draws = [canary_draw(f"b:{line}") for line in range(1, 5001)]
    assert draws == [canary_draw(f"b:{line}") for line in range(1, 5001)]
    share = sum(d < 10 for d in draws) / len(draws)
    assert 0.07 <= share <= 0.13  # 10% within +-3 points
    assert all(0 <= d < 100 for d in draws)


def test_a_label_with_a_canary_resolves_by_the_draw(store: TemplateStore) -> None:
    _put(
        store,
        LabelRecord(
            name="summarize", label="production", version=2, canary_version=3, canary_percent=10
        ),
    )
    assert store.canary("summarize", "production") == (3, 10)
    assert store.resolve("summarize@production", draw=9.99).version == 3
    assert store.resolve("summarize@production", draw=10.0).version == 2
    assert store.resolve("summarize@production").version == 2  # no draw: the baseline
    assert store.resolve("summarize@3", draw=0).version == 3  # a version is a version
    _put(store, LabelRecord(name="summarize", label="production", version=2))  # rolled back
    assert store.canary("summarize", "production") is None
    assert store.resolve("summarize@production", draw=0).version == 2


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"canary_version": 3}, "needs both"),
        ({"canary_version": 2, "canary_percent": 5}, "the label's own version"),
        ({"canary_version": 3, "canary_percent": 100}, "less than 100"),
    ],
)
def test_a_canary_must_make_sense(fields: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        LabelRecord(name="s", label="production", version=2, **fields)
