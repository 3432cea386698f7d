"""Wiring: from settings (and the running local stack) to connected components.

An explicit setting always wins; otherwise the local stack started by
``promptmill dev up`` is found through its ``stack.json``; otherwise the command stops
with one line saying what is missing and how to provide it.
"""

from __future__ import annotations

from dataclasses import dataclass

from promptmill.dev.processes import StackError
from promptmill.dev.stack import StackInfo, load_stack
from promptmill.settings import Settings, SettingsError
from schemas.audit import Actor
from topics import KafkaConnection, TopicCatalog
from topics.blobs import BlobStore, open_blob_store
from topics.redis import RedisClient, connect_redis

SIM_MODEL = "promptmill-sim"
FALLBACK_MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class ModelEndpoint:
    base_url: str
    api_key: str
    default_model: str


def stack_of(settings: Settings) -> StackInfo | None:
    return load_stack(settings.state_dir)


def kafka_connection(settings: Settings) -> KafkaConnection:
    """Explicit settings, else the local stack's broker; a secure stack (``dev up --secure``)
    brings its SASL_SSL settings too, unless ``PROMPTMILL_KAFKA_SECURITY_PROTOCOL`` is set."""
    servers = settings.kafka_bootstrap_servers
    if servers is None:
        stack = stack_of(settings)
        if stack is None or stack.kafka is None:
            raise SettingsError(
                "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS or start the local stack "
                "with `promptmill dev up`"
            )
        servers = stack.kafka.bootstrap
        security = stack.kafka.security
        if security is not None and "kafka_security_protocol" not in settings.model_fields_set:
            try:
                secret = security.password()
            except StackError as exc:
                raise SettingsError(str(exc)) from None
            return KafkaConnection(
                bootstrap_servers=servers,
                security_protocol=security.protocol,
                sasl_mechanism=security.mechanism,
                sasl_username=security.username,
                sasl_password=secret,
                ssl_cafile=security.ca_file,
            )
    password = settings.kafka_sasl_password
    return KafkaConnection(
        bootstrap_servers=servers,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=password.get_secret_value() if password else None,
        ssl_cafile=settings.kafka_ssl_cafile,
        ssl_certfile=settings.kafka_ssl_certfile,
        ssl_keyfile=settings.kafka_ssl_keyfile,
    )


def catalog(settings: Settings) -> TopicCatalog:
    try:
        return TopicCatalog(
            settings.topic_prefix,
            partitions=settings.topic_partitions,
            replication=settings.topic_replication,
            retention_ms=settings.topic_retention_ms,
        )
    except ValueError as exc:
        raise SettingsError(
            f"bad setting PROMPTMILL_TOPIC_PARTITIONS/RETENTION_MS: {exc}"
        ) from None


def redis_url(settings: Settings) -> str | None:
    """The Redis URL, or ``None`` when there is none (the worker then runs uncached)."""
    if settings.redis_url is not None:
        return settings.redis_url
    stack = stack_of(settings)
    return stack.redis.url if stack is not None and stack.redis is not None else None


def redis(settings: Settings) -> RedisClient | None:
    """A Redis client (or Cluster client, ``PROMPTMILL_REDIS_CLUSTER``), or ``None`` when no
    Redis is configured or running. The caller closes it (``aclose``)."""
    url = redis_url(settings)
    return connect_redis(url, cluster=settings.redis_cluster) if url is not None else None


def operator(settings: Settings) -> Actor:
    """The command line's identity in the audit trail (``PROMPTMILL_OPERATOR``)."""
    return Actor(operator=settings.operator or "unnamed-operator")


def blob_store(settings: Settings) -> BlobStore:
    """Where the front door's files live: ``PROMPTMILL_BLOB_URL``, else ``files/`` in the
    state dir (one machine; a multi-node deployment sets an ``s3://`` URL)."""
    url = settings.blob_url or str(settings.state_dir / "files")
    try:
        return open_blob_store(url)
    except ValueError as exc:
        raise SettingsError(f"bad setting PROMPTMILL_BLOB_URL: {exc}") from None


def model_endpoint(settings: Settings) -> ModelEndpoint:
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if settings.openai_base_url is not None:
        return ModelEndpoint(
            settings.openai_base_url, key or "none", settings.default_model or FALLBACK_MODEL
        )
    stack = stack_of(settings)
    if stack is not None and stack.model_real is not None and settings.model_backend != "sim":
        real = stack.model_real
        return ModelEndpoint(real.base_url, key or "local", settings.default_model or real.model)
    if stack is not None and stack.model_sim is not None and settings.model_backend != "real":
        sim = stack.model_sim
        return ModelEndpoint(sim.base_url, key or "sim", settings.default_model or SIM_MODEL)
    raise SettingsError(
        "no model endpoint: set OPENAI_BASE_URL (and OPENAI_API_KEY) or start the local "
        "stack with `promptmill dev up`"
    )
