"""The topic catalog: every topic promptmill uses, named once, with an environment prefix.

``<prefix>.jobs`` carries prompt jobs; ``<prefix>.completions`` and ``<prefix>.failures``
carry the terminal records; ``<prefix>.templates`` is compacted and holds every template
version and label (and every revision of the model catalog); ``<prefix>.batches`` holds
batch manifests; ``<prefix>.moderation`` holds one verdict per completion, which is also
routed to ``<prefix>.approved`` or ``<prefix>.flagged``; ``<prefix>.reports`` holds
windowed usage reports; ``<prefix>.audit`` is the append-only audit trail. Partitions,
replication and retention come from settings; cleanup policy is part of the contract. With
three or more replicas every topic also asks for two in-sync replicas (see
``MIN_INSYNC_REPLICAS``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

DAY_MS = 24 * 3600 * 1000


class TopicKind(StrEnum):
    JOBS = "jobs"
    COMPLETIONS = "completions"
    FAILURES = "failures"
    TEMPLATES = "templates"
    BATCHES = "batches"
    MODERATION = "moderation"
    APPROVED = "approved"
    FLAGGED = "flagged"
    REPORTS = "reports"
    AUDIT = "audit"
    EVALS = "evals"  # a score per completion of a template with online checks


class ConsumerGroup(StrEnum):
    """Consumer group suffixes, one per processor."""

    PROMPTS = "prompts"
    MODERATION = "moderation"
    BATCHES = "batches"
    REPORTING = "reporting"
    OUTPUTS = "outputs"
    EVALS = "evals"


class TransactionalId(StrEnum):
    """Transactional ids (suffixes), one per kind of transactional writer."""

    TEMPLATES = "templates-writer"  # every push and label move: they fence each other


DEFAULT_PARTITIONS: dict[TopicKind, int] = {
    TopicKind.JOBS: 12,
    TopicKind.COMPLETIONS: 6,
    TopicKind.FAILURES: 3,
    TopicKind.TEMPLATES: 1,
    TopicKind.BATCHES: 3,
    TopicKind.MODERATION: 6,
    TopicKind.APPROVED: 6,
    TopicKind.FLAGGED: 3,
    TopicKind.REPORTS: 3,
    TopicKind.AUDIT: 1,  # one partition: the trail reads in the order it was written
    TopicKind.EVALS: 6,
}
DEFAULT_RETENTION_MS: dict[TopicKind, int] = {
    TopicKind.JOBS: 7 * DAY_MS,
    TopicKind.COMPLETIONS: 14 * DAY_MS,
    TopicKind.FAILURES: 30 * DAY_MS,
    TopicKind.TEMPLATES: -1,
    TopicKind.BATCHES: 30 * DAY_MS,
    TopicKind.MODERATION: 14 * DAY_MS,
    TopicKind.APPROVED: 14 * DAY_MS,
    TopicKind.FLAGGED: 30 * DAY_MS,
    TopicKind.REPORTS: 90 * DAY_MS,
    TopicKind.AUDIT: 400 * DAY_MS,
    TopicKind.EVALS: 30 * DAY_MS,
}
COMPACTED = {TopicKind.TEMPLATES}
# With acks=all a write is acknowledged once every in-sync replica has it. Two in-sync
# replicas out of three or more: a topic keeps taking writes when one broker is lost,
# and never acknowledges a write that only one replica holds. With one or two replicas
# the broker's default applies (two of two would stop writes on any broker loss).
MIN_INSYNC_REPLICAS = 2
MIN_INSYNC_FROM_REPLICATION = 3


@dataclass(frozen=True)
class TopicSpec:
    """A topic as it should exist on the broker."""

    kind: TopicKind
    name: str
    partitions: int
    replication: int
    config: dict[str, str] = field(default_factory=dict)


class TopicCatalog:
    """Names and specs of promptmill's topics for one environment prefix."""

    def __init__(
        self,
        prefix: str,
        *,
        partitions: dict[str, int] | None = None,
        replication: int = 1,
        retention_ms: dict[str, int] | None = None,
    ) -> None:
        unknown = set(partitions or {}) | set(retention_ms or {})
        unknown -= {k.value for k in TopicKind}
        if unknown:
            raise ValueError(f"unknown topic kind(s) in settings: {', '.join(sorted(unknown))}")
        self.prefix = prefix
        self._partitions = {k: (partitions or {}).get(k, DEFAULT_PARTITIONS[k]) for k in TopicKind}
        self._retention = {
            k: (retention_ms or {}).get(k, DEFAULT_RETENTION_MS[k]) for k in TopicKind
        }
        self._replication = replication

    def name(self, kind: TopicKind) -> str:
        return f"{self.prefix}.{kind.value}"

    def group(self, group: ConsumerGroup) -> str:
        return f"{self.prefix}.{group.value}"

    def transactional_id(self, writer: TransactionalId) -> str:
        return f"{self.prefix}.{writer.value}"

    def spec(self, kind: TopicKind) -> TopicSpec:
        if kind in COMPACTED:
            config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
        else:
            config = {"cleanup.policy": "delete", "retention.ms": str(self._retention[kind])}
        if self._replication >= MIN_INSYNC_FROM_REPLICATION:
            config["min.insync.replicas"] = str(MIN_INSYNC_REPLICAS)
        return TopicSpec(kind, self.name(kind), self._partitions[kind], self._replication, config)

    def specs(self) -> list[TopicSpec]:
        return [self.spec(kind) for kind in TopicKind]
