"""Settings from the environment, and the topic catalog and Kafka connection they build."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr

from promptmill.settings import Settings, SettingsError, load_settings
from topics import ConsumerGroup, KafkaConnection, TopicCatalog, TopicKind
from topics.catalog import DAY_MS

pytestmark = pytest.mark.timeout(10)

ALIASES = ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment in an empty working directory (so no .env leaks in)."""
    for name in list(os.environ):
        if name.upper().startswith("PROMPTMILL_") or name.upper() in ALIASES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults(env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.kafka_bootstrap_servers is None
    assert settings.redis_url is None
    assert settings.openai_base_url is None
    assert settings.openai_api_key is None
    assert settings.topic_prefix == "promptmill"
    assert settings.worker_concurrency == 128
    assert settings.model_max_attempts == 6
    assert settings.cache_enabled is True
    assert settings.log_level == "INFO"


def test_prefixed_environment_variables(env: pytest.MonkeyPatch) -> None:
    env.setenv("PROMPTMILL_WORKER_CONCURRENCY", "16")
    env.setenv("PROMPTMILL_TOPIC_PREFIX", "staging.pm")
    env.setenv("PROMPTMILL_TOPIC_PARTITIONS", '{"jobs": 24}')
    env.setenv("PROMPTMILL_CACHE_ENABLED", "false")
    env.setenv("PROMPTMILL_MODEL_TIMEOUT_SECONDS", "2.5")
    env.setenv("PROMPTMILL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("promptmill_log_level", "DEBUG")  # names are case-insensitive
    settings = load_settings()
    assert settings.worker_concurrency == 16
    assert settings.topic_prefix == "staging.pm"
    assert settings.topic_partitions == {"jobs": 24}
    assert settings.cache_enabled is False
    assert settings.model_timeout_seconds == 2.5
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.log_level == "DEBUG"


def test_connection_settings_answer_to_common_names(env: pytest.MonkeyPatch) -> None:
    env.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    env.setenv("REDIS_URL", "redis://cache:6379/2")
    env.setenv("OPENAI_BASE_URL", "https://api.example.com/v1")
    env.setenv("OPENAI_API_KEY", "sk-common-name")
    settings = load_settings()
    assert settings.kafka_bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.redis_url == "redis://cache:6379/2"
    assert settings.openai_base_url == "https://api.example.com/v1"
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-common-name"


@pytest.mark.parametrize("name", ALIASES)
def test_connection_settings_also_take_the_prefix(env: pytest.MonkeyPatch, name: str) -> None:
    env.setenv(f"PROMPTMILL_{name}", "value-1")
    value = getattr(load_settings(), name.lower())
    assert (value.get_secret_value() if isinstance(value, SecretStr) else value) == "value-1"


def test_dotenv_file_in_the_working_directory(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PROMPTMILL_WORKER_CONCURRENCY=7\nREDIS_URL=redis://dotenv\n")
    settings = load_settings()
    assert settings.worker_concurrency == 7
    assert settings.redis_url == "redis://dotenv"
    env.setenv("PROMPTMILL_WORKER_CONCURRENCY", "9")  # the environment wins over .env
    assert load_settings().worker_concurrency == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROMPTMILL_WORKER_CONCURRENCY", "lots"),
        ("PROMPTMILL_WORKER_CONCURRENCY", "0"),
        ("PROMPTMILL_MODEL_MAX_ATTEMPTS", "51"),
        ("PROMPTMILL_MODEL_TIMEOUT_SECONDS", "-1"),
        ("PROMPTMILL_LOG_LEVEL", "CHATTY"),
        ("PROMPTMILL_TOPIC_PREFIX", "has spaces"),
        ("PROMPTMILL_KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("PROMPTMILL_CACHE_ENABLED", "maybe"),
    ],
)
def test_bad_value_names_the_variable(env: pytest.MonkeyPatch, name: str, value: str) -> None:
    env.setenv(name, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    message = exc.value.message
    assert message.startswith(f"bad setting {name}: ")
    assert "\n" not in message


def test_bad_json_setting_names_the_variable(env: pytest.MonkeyPatch) -> None:
    env.setenv("PROMPTMILL_TOPIC_PARTITIONS", "jobs=24")
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert exc.value.message.startswith("bad setting PROMPTMILL_TOPIC_PARTITIONS: ")


def test_secrets_never_show(env: pytest.MonkeyPatch) -> None:
    env.setenv("OPENAI_API_KEY", "sk-very-secret")
    env.setenv("PROMPTMILL_KAFKA_SASL_PASSWORD", "kafka-very-secret")
    settings = load_settings()
    assert isinstance(settings.openai_api_key, SecretStr)
    assert isinstance(settings.kafka_sasl_password, SecretStr)
    for text in (repr(settings), str(settings), repr(settings.openai_api_key)):
        assert "very-secret" not in text
    assert "very-secret" not in Settings.model_dump_json(settings)
    assert settings.kafka_sasl_password.get_secret_value() == "kafka-very-secret"


def test_catalog_names_and_specs() -> None:
    catalog = TopicCatalog("staging")
    assert {k: catalog.name(k) for k in TopicKind} == {
        TopicKind.JOBS: "staging.jobs",
        TopicKind.COMPLETIONS: "staging.completions",
        TopicKind.FAILURES: "staging.failures",
        TopicKind.TEMPLATES: "staging.templates",
        TopicKind.BATCHES: "staging.batches",
        TopicKind.MODERATION: "staging.moderation",
        TopicKind.APPROVED: "staging.approved",
        TopicKind.FLAGGED: "staging.flagged",
        TopicKind.REPORTS: "staging.reports",
        TopicKind.AUDIT: "staging.audit",
        TopicKind.EVALS: "staging.evals",
    }
    assert catalog.group(ConsumerGroup.PROMPTS) == "staging.prompts"
    assert catalog.group(ConsumerGroup.EVALS) == "staging.evals"
    assert catalog.group(ConsumerGroup.REPORTING) == "staging.reporting"
    assert catalog.group(ConsumerGroup.MODERATION) == "staging.moderation"
    specs = {s.kind: s for s in catalog.specs()}
    assert list(specs) == list(TopicKind)
    templates = specs[TopicKind.TEMPLATES]
    assert templates.config["cleanup.policy"] == "compact"
    assert "retention.ms" not in templates.config
    assert templates.partitions == 1
    for kind in (TopicKind.JOBS, TopicKind.COMPLETIONS, TopicKind.FAILURES, TopicKind.BATCHES):
        assert specs[kind].config["cleanup.policy"] == "delete"
    assert specs[TopicKind.JOBS].config["retention.ms"] == str(7 * DAY_MS)
    assert specs[TopicKind.JOBS].partitions == 12
    audit = specs[TopicKind.AUDIT]  # append-only, read in the order written
    assert (audit.partitions, audit.config["cleanup.policy"]) == (1, "delete")


def test_catalog_overrides() -> None:
    catalog = TopicCatalog(
        "pm", partitions={"jobs": 48}, replication=3, retention_ms={"failures": 1000}
    )
    jobs, failures = catalog.spec(TopicKind.JOBS), catalog.spec(TopicKind.FAILURES)
    assert (jobs.name, jobs.partitions, jobs.replication) == ("pm.jobs", 48, 3)
    assert failures.config["retention.ms"] == "1000"
    assert catalog.spec(TopicKind.COMPLETIONS).partitions == 6


@pytest.mark.parametrize("replication", [3, 5])
def test_replicated_topics_need_two_in_sync_replicas(replication: int) -> None:
    catalog = TopicCatalog("pm", replication=replication)
    for spec in catalog.specs():
        assert spec.config["min.insync.replicas"] == "2", spec.name
    assert catalog.spec(TopicKind.TEMPLATES).config["cleanup.policy"] == "compact"
    assert catalog.spec(TopicKind.JOBS).config["cleanup.policy"] == "delete"


@pytest.mark.parametrize("replication", [1, 2])
def test_few_replicas_leave_min_insync_replicas_to_the_broker(replication: int) -> None:
    catalog = TopicCatalog("pm", replication=replication)
    for spec in catalog.specs():
        assert "min.insync.replicas" not in spec.config, spec.name


def test_catalog_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown topic kind"):
        TopicCatalog("pm", partitions={"job": 3})
    with pytest.raises(ValueError, match="retention, templatez"):
        TopicCatalog("pm", retention_ms={"templatez": 1, "retention": 2})


def test_kafka_connection_repr_hides_the_password() -> None:
    conn = KafkaConnection(
        "broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="p4ss-w0rd",
    )
    assert "p4ss-w0rd" not in repr(conn)
    assert "p4ss-w0rd" not in str(conn)
    assert "broker:9093" in repr(conn)


def test_kafka_connection_options() -> None:
    plain = KafkaConnection("localhost:9092").client_options()
    assert plain == {"bootstrap_servers": "localhost:9092", "security_protocol": "PLAINTEXT"}

    sasl_ssl = KafkaConnection(
        "broker:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password="secret",
    ).client_options()
    assert isinstance(sasl_ssl.pop("ssl_context"), ssl.SSLContext)
    assert sasl_ssl == {
        "bootstrap_servers": "broker:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "secret",
    }

    sasl_plain = KafkaConnection("b:9092", security_protocol="SASL_PLAINTEXT").client_options()
    assert "ssl_context" not in sasl_plain
    assert sasl_plain["sasl_mechanism"] == "PLAIN"

    tls = KafkaConnection("b:9093", security_protocol="SSL").client_options()
    assert isinstance(tls["ssl_context"], ssl.SSLContext)
    assert tls["ssl_context"].verify_mode is ssl.CERT_REQUIRED
    assert "sasl_mechanism" not in tls


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `")
        for line in readme.splitlines()
        if line.startswith("| `PROMPTMILL_")
    }
    assert {f"PROMPTMILL_{name.upper()}" for name in Settings.model_fields} <= rows
