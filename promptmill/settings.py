"""Settings: one pydantic-settings model, built once at start.

Every setting is an environment variable with the ``PROMPTMILL_`` prefix (also read from
a ``.env`` file); the connection settings also answer to the names other tools use
(``KAFKA_BOOTSTRAP_SERVERS``, ``REDIS_URL``, ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``).
A bad value stops the program with one line naming the variable (:func:`load_settings`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from processors.fleet.limits import Limit
from processors.pricing import Price
from schemas import PromptmillError


def _alias(name: str) -> AliasChoices:
    return AliasChoices(name, f"PROMPTMILL_{name}")


class SettingsError(PromptmillError):
    """A setting is missing or invalid."""


class Settings(BaseSettings):
    """All of promptmill's settings; field docs are the README's settings table."""

    model_config = SettingsConfigDict(
        env_prefix="PROMPTMILL_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # Kafka
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=_alias("KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers; unset = the local stack's broker",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    topic_prefix: str = Field(default="promptmill", pattern=r"^[A-Za-z0-9._\-]+$")
    topic_partitions: dict[str, int] = Field(default_factory=dict)
    topic_replication: int = Field(default=1, ge=1)
    topic_retention_ms: dict[str, int] = Field(default_factory=dict)

    # Redis
    redis_url: str | None = Field(
        default=None,
        validation_alias=_alias("REDIS_URL"),
        description="Redis URL; unset = the local stack's redis-server",
    )
    redis_key_prefix: str = "promptmill"
    redis_cluster: bool = False

    # Model endpoint
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=_alias("OPENAI_BASE_URL"),
        description="OpenAI-compatible base URL; unset = the local stack's model",
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=_alias("OPENAI_API_KEY")
    )
    default_model: str | None = None
    model_catalog: Path | None = Field(
        default=None,
        description="YAML model catalog (model groups and their deployments); unset = one "
        "deployment, OPENAI_BASE_URL",
    )
    breaker_failures: int = Field(default=5, ge=1, le=10_000)
    breaker_window_seconds: float = Field(default=10.0, gt=0, le=3600)
    breaker_cooldown_seconds: float = Field(default=15.0, gt=0, le=3600)
    model_backend: Literal["auto", "sim", "real"] = Field(
        default="auto",
        description="which local-stack model to use when OPENAI_BASE_URL is unset",
    )
    model_timeout_seconds: float = Field(default=60.0, gt=0)
    model_max_attempts: int = Field(default=6, ge=1, le=50)
    model_backoff_base_seconds: float = Field(default=0.5, gt=0)
    model_backoff_max_seconds: float = Field(default=30.0, gt=0)
    max_prompt_tokens: int = Field(default=8192, ge=1)
    model_auth_probe_seconds: float = Field(default=10.0, gt=0, le=3600)
    max_job_bytes: int = Field(default=1_000_000, ge=1024)
    batch_wait_seconds: float = Field(default=10.0, ge=0, le=3600)
    render_timeout_seconds: float = Field(default=2.0, gt=0, le=300)
    render_processes: int = Field(default=2, ge=1, le=64)
    render_memory_mb: int = Field(default=256, ge=64, le=65536)
    render_max_output_bytes: int = Field(default=1_000_000, ge=1024)

    # Worker
    worker_concurrency: int = Field(default=128, ge=1, le=10000)
    worker_drain_seconds: float = Field(default=25.0, ge=0)
    worker_commit_interval_seconds: float = Field(default=0.5, gt=0)
    worker_session_timeout_ms: int = Field(default=10000, ge=1000)
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    cache_shared_across_tenants: bool = False

    # Rate limits (shared by the fleet in Redis)
    model_limits: dict[str, Limit] = Field(default_factory=dict)
    tenant_limits: dict[str, Limit] = Field(default_factory=dict)
    rate_limit_burst_seconds: float = Field(default=1.0, gt=0, le=60)
    rate_limit_local_share: float = Field(default=0.5, gt=0, le=1)
    rate_limit_recovery_seconds: float = Field(default=3.0, ge=0)
    rate_limit_max_wait_seconds: float = Field(default=600.0, gt=0)
    completion_tokens_estimate: int = Field(default=256, ge=1)
    model_prices: dict[str, Price] = Field(default_factory=dict)
    moderation_model: str | None = None
    moderation_template: str | None = None
    report_window_seconds: int = Field(default=60, ge=1, le=86400)
    report_flush_seconds: float = Field(default=1.0, gt=0)

    # Quality in production (promptmill worker --processor evals)
    evals_judge_sample: float = Field(default=0.1, ge=0, le=1)
    evals_judge_model: str | None = None
    evals_embedding_model: str = "text-embedding-3-small"
    evals_alert_pass_rate: float | None = Field(default=None, ge=0, le=1)
    evals_alert_window: int = Field(default=200, ge=1, le=100_000)
    evals_alert_min_samples: int = Field(default=20, ge=1)

    # The HTTP front door (promptmill serve)
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=8080, ge=0, le=65535)
    serve_tls_cert: Path | None = None
    serve_tls_key: Path | None = None
    serve_max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    serve_max_requests: int = Field(default=50_000, ge=1)
    serve_lease_seconds: float = Field(default=15.0, ge=1.0, le=3600)
    blob_url: str | None = None
    s3_endpoint_url: str | None = None
    operator: str | None = Field(default=None, max_length=128)

    # Observability
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    rate_limit_true_up: Literal["prompt", "usage"] = "prompt"

    # Local stack and logging
    state_dir: Path = Path.home() / ".local" / "state" / "promptmill"
    cache_dir: Path = Path.home() / ".cache" / "promptmill"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator(
        "kafka_bootstrap_servers",
        "redis_url",
        "openai_base_url",
        "openai_api_key",
        "default_model",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


def load_settings() -> Settings:
    """Build the settings once; a bad value raises :class:`SettingsError` naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        name = f"PROMPTMILL_{field.upper()}" if not field.isupper() else field
        raise SettingsError(f"bad setting {name}: {err['msg']}") from None
    except SourceError as exc:  # a complex value (dict, list) that is not JSON
        found = re.search(r'field "(\w+)"', str(exc))
        name = f"PROMPTMILL_{found.group(1).upper()}" if found else "(unknown)"
        raise SettingsError(f"bad setting {name}: not valid JSON") from None
