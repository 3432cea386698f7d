"""The model catalog: model groups (the names jobs and templates use) and their deployments.

A catalog is a YAML file::

    groups:
      gpt-4o-mini:                    # what jobs and templates call the model
        routing: weighted             # or cost: the cheapest deployment with room first
        fallbacks: [small-local]      # other groups to try, in order, when this one fails
        deployments:
          - name: openai
            kind: openai
            base_url: https://api.openai.example/v1
            model: gpt-4o-mini        # the provider's name for it
            api_key_env: OPENAI_API_KEY
            rpm: 10000
            tpm: 2000000
            price_input_per_1m: 0.15
            price_output_per_1m: 0.60
            context_window: 128000
          - name: azure-eu
            kind: azure
            base_url: https://my-resource.openai.azure.example
            azure_deployment: gpt-4o-mini-eu
            api_version: "2024-10-21"
            api_key_file: /run/secrets/azure-key
            weight: 2

Keys are never written in the catalog: a deployment names an environment variable
(``api_key_env``) or a file (``api_key_file``, a mounted secret), and a key given inline
(``api_key``, or an ``Authorization``/``api-key`` header) is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.yaml_files import YamlFileError, load_yaml, parse_yaml, validate_yaml

SECRET_HEADERS = {"authorization", "api-key", "x-api-key", "openai-api-key"}
NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$"


class Deployment(BaseModel):
    """One place a model group can be served from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME, description="Unique within its group.")
    kind: Literal["openai", "azure", "compatible"] = Field(
        "compatible",
        description="openai, azure (through the SDK's Azure client), or any "
        "OpenAI-compatible server (vLLM, llama.cpp, ...).",
    )
    base_url: str = Field(pattern=r"^https?://", description="The API's base URL.")
    model: str | None = Field(None, description="The provider's model name (default: the group's).")
    azure_deployment: str | None = Field(None, description="Azure: the deployment name.")
    api_version: str | None = Field(None, description="Azure: the API version.")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_file: str | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    price_input_per_1m: float = Field(0.0, ge=0)
    price_output_per_1m: float = Field(0.0, ge=0)
    context_window: int | None = Field(None, ge=1)
    timeout_seconds: float = Field(60.0, gt=0)
    weight: float = Field(1.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError(
                "an API key may not be written in the catalog: name it with api_key_env "
                "(an environment variable) or api_key_file (a mounted secret)"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Deployment:
        if self.api_key_env and self.api_key_file:
            raise ValueError("give api_key_env or api_key_file, not both")
        secret = sorted(h for h in self.headers if h.lower() in SECRET_HEADERS)
        if secret:
            raise ValueError(
                f"header {secret[0]} carries a key inline: use api_key_env or api_key_file"
            )
        if self.kind == "azure" and not (self.api_version and self.azure_deployment):
            raise ValueError("an azure deployment needs api_version and azure_deployment")
        if self.kind != "azure" and (self.api_version or self.azure_deployment):
            raise ValueError("api_version and azure_deployment are for kind: azure only")
        return self

    def api_key(self) -> str:
        """The key, read where the catalog says (``none`` for a server that needs none)."""
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if value is None:
                raise YamlFileError(
                    f"deployment {self.name}: environment variable {self.api_key_env} is not set"
                )
            return value
        if self.api_key_file:
            try:
                return Path(self.api_key_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise YamlFileError(
                    f"deployment {self.name}: cannot read api_key_file {self.api_key_file}: "
                    f"{exc.strerror}"
                ) from None
        return "none"

    def price_per_token(self) -> float:
        """A deployment's price for ranking: input and output per 1M tokens, together."""
        return self.price_input_per_1m + self.price_output_per_1m

    def key_source(self) -> str:
        if self.api_key_env:
            return f"env {self.api_key_env}"
        if self.api_key_file:
            return f"file {self.api_key_file}"
        return "(none)"


class ModelGroup(BaseModel):
    """The deployments behind one model name, and where to go when all of them fail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    routing: Literal["weighted", "cost"] = "weighted"
    fallbacks: list[str] = Field(default_factory=list)
    # a refusal on content policy moves the call to the fallback groups (whose providers'
    # policies may differ); off: it is the job's answer (a content_filter dead letter)
    fallback_on_content_filter: bool = False
    deployments: list[Deployment] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ModelGroup:
        names = [d.name for d in self.deployments]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"deployment name {repeated[0]} is used twice")
        return self


class Catalog(BaseModel):
    """Every model group by name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    groups: dict[str, ModelGroup] = Field(min_length=1)

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> Catalog:
        for name, group in self.groups.items():
            for fallback in group.fallbacks:
                if fallback not in self.groups:
                    raise ValueError(f"group {name}: fallback {fallback} is not a group")
                if fallback == name:
                    raise ValueError(f"group {name}: a group cannot fall back to itself")
        return self

    def provider_model(self, group: str, deployment: Deployment) -> str:
        return deployment.azure_deployment or deployment.model or group


def load_catalog(path: Path) -> Catalog:
    """The catalog in ``path``; errors name file, line and field."""
    node, data = load_yaml(path, "a model catalog")
    return validate_yaml(path, node, data, Catalog)


def parse_catalog(text: str, origin: str) -> Catalog:
    """The catalog in ``text`` (a file's contents, as pushed); errors name ``origin``."""
    node, data = parse_yaml(text, origin, "a model catalog")
    return validate_yaml(origin, node, data, Catalog)


def single_endpoint(base_url: str, model: str, key_env: str | None) -> Catalog:
    """The one-deployment catalog of ``OPENAI_BASE_URL`` (what runs without a catalog)."""
    deployment = Deployment(name="default", base_url=base_url, model=model, api_key_env=key_env)
    return Catalog(groups={model: ModelGroup(deployments=[deployment])})
