"""The records a processor sees and the outcome records it returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas import Header, SourcePosition


@dataclass(frozen=True)
class InRecord:
    """A consumed Kafka record, decoupled from the client library."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int = 0

    @classmethod
    def of(cls, raw: Any) -> InRecord:
        return cls(
            raw.topic,
            raw.partition,
            raw.offset,
            raw.key,
            raw.value,
            tuple(raw.headers or ()),
            raw.timestamp,
        )

    def header(self, name: Header) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("utf-8", "replace")
        return None

    @property
    def position(self) -> SourcePosition:
        return SourcePosition(topic=self.topic, partition=self.partition, offset=self.offset)


@dataclass(frozen=True)
class Outcome:
    """A record to publish as (part of) the result of processing one input record."""

    topic: str
    value: bytes
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)
    dead_letter: bool = False
    code: str | None = None  # the error code of a dead letter
