"""The model catalog file: what loads, and what is refused with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.catalog import load_catalog
from schemas.yaml_files import YamlFileError

GOOD = """\
groups:
  chat:
    routing: weighted
    fallbacks: [small]
    deployments:
      - name: openai
        kind: openai
        base_url: https://api.example/v1
        model: gpt-4o-mini
        api_key_env: OPENAI_API_KEY
        rpm: 10000
        tpm: 2000000
        price_input_per_1m: 0.15
        price_output_per_1m: 0.6
        context_window: 128000
      - name: azure-eu
        kind: azure
        base_url: https://my-resource.azure.example
        azure_deployment: chat-eu
        api_version: "2024-10-21"
        api_key_file: /run/secrets/azure
        weight: 2
        headers: {x-team: research}
  small:
    deployments:
      - name: vllm
        base_url: http://vllm:8000/v1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


def test_a_catalog_of_openai_azure_and_a_compatible_server_loads(tmp_path: Path) -> None:
    catalog = load_catalog(write(tmp_path, GOOD))
    chat = catalog.groups["chat"]
    assert [d.name for d in chat.deployments] == ["openai", "azure-eu"]
    assert chat.fallbacks == ["small"]
    assert catalog.provider_model("chat", chat.deployments[1]) == "chat-eu"
    assert catalog.provider_model("small", catalog.groups["small"].deployments[0]) == "small"
    assert chat.deployments[0].key_source() == "env OPENAI_API_KEY"


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (
            ("        api_key_env: OPENAI_API_KEY\n", "        api_key: sk-live-123\n"),
            6,
            "field groups.chat.deployments.0: an API key may not be written in the catalog",
        ),
        (
            ("headers: {x-team: research}", "headers: {Authorization: Bearer sk-1}"),
            16,
            "header Authorization carries a key inline",
        ),
        (
            ('        api_version: "2024-10-21"\n', ""),
            16,
            "an azure deployment needs api_version and azure_deployment",
        ),
        (("fallbacks: [small]", "fallbacks: [tiny]"), 1, "fallback tiny is not a group"),
        (("name: azure-eu", "name: openai"), 3, "deployment name openai is used twice"),
        (("rpm: 10000", "rpm: -5"), 11, "field groups.chat.deployments.0.rpm:"),
        (("weight: 2", "weight: 0"), 22, "field groups.chat.deployments.1.weight:"),
        (("base_url: http://vllm:8000/v1", "base_url: vllm:8000"), 27, "base_url"),
        (("routing: weighted", "routing: fastest"), 3, "field groups.chat.routing:"),
        (("        rpm: 10000\n", "        rpm: [\n"), 13, "invalid YAML"),
    ],
)
def test_a_bad_catalog_is_refused_with_its_line_and_field(
    tmp_path: Path, change: tuple[str, str], line: int, message: str
) -> None:
    assert change[0] in GOOD
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(YamlFileError) as exc:
        load_catalog(path)
    text = str(exc.value)
    assert text.startswith(f"{path}:{line}: "), text
    assert message in text
    assert "\n" not in text
    assert "sk-" not in text  # a key given inline is never repeated back


def test_a_key_named_but_not_there_is_an_error_at_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    catalog = load_catalog(write(tmp_path, GOOD))
    openai_, azure = catalog.groups["chat"].deployments
    with pytest.raises(YamlFileError, match="environment variable OPENAI_API_KEY is not set"):
        openai_.api_key()
    with pytest.raises(YamlFileError, match="cannot read api_key_file /run/secrets/azure"):
        azure.api_key()
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert openai_.api_key() == "from-env"
