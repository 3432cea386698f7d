"""``stack.json``: what runs where in the local stack, one record per component.

Every component is a process known by its pid *and* start time (a pid the kernel
reused does not count as running) with its log file, and the address clients use::

    {"kafka": {"pid": 4242, "start_time": 901234, "log": ".../kafka/kafka.log",
               "bootstrap": "127.0.0.1:39001"},
     "redis": {..., "url": "redis://127.0.0.1:39002/0"},
     "model_sim": {..., "base_url": "http://127.0.0.1:39003/v1"}}

A Kafka cluster keeps ``bootstrap`` (all its brokers, comma-separated, so every reader
of a single broker works unchanged) and adds ``nodes``: per node its id, pid, start
time, ports, log and home dir (``<state_dir>/kafka/node-<id>``). A secure broker
(``dev up --secure``) adds ``security``: protocol, SASL mechanism, client user, the path
of its password file and of the CA (:mod:`promptmill.dev.secure`); never the password.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from promptmill.dev.cluster import KafkaNode, bootstrap_servers, stop_cluster
from promptmill.dev.processes import STOP_TIMEOUT_S, StackError, runs, stop
from promptmill.dev.secure import KafkaSecurity

COMPONENTS = ("kafka", "redis", "model_sim", "model_sim_2", "model_sim_3", "model_real")
STACK_FILE = "stack.json"


class ProcessInfo(BaseModel):
    """One running server: pid, start time (guards against pid reuse), log file."""

    model_config = ConfigDict(frozen=True)

    pid: int
    start_time: int | None = None
    log: Path

    address_field: ClassVar[str]

    @property
    def address(self) -> str:
        """Where clients reach it (bootstrap servers, URL or base URL)."""
        return str(getattr(self, self.address_field))

    def is_alive(self) -> bool:
        """True if the recorded process (same pid, same start time) still runs."""
        return runs(self.pid, self.start_time)

    def stop(self) -> None:
        """Stop the process (SIGTERM, SIGKILL after a grace period)."""
        stop(self.pid, STOP_TIMEOUT_S)


class KafkaInfo(ProcessInfo):
    """The Kafka broker, or a cluster of brokers.

    For a cluster, ``nodes`` lists every node, and ``pid``, ``start_time`` and ``log``
    repeat the first node's for readers that know a single broker. ``security`` is set
    when its only client listener is SASL_SSL.
    """

    address_field = "bootstrap"
    bootstrap: str
    nodes: list[KafkaNode] | None = None
    security: KafkaSecurity | None = None

    @property
    def address(self) -> str:
        """The bootstrap servers, prefixed with ``SASL_SSL://`` for a secure broker."""
        if self.security is not None:
            return f"{self.security.protocol}://{self.bootstrap}"
        return self.bootstrap

    @classmethod
    def of_cluster(cls, nodes: list[KafkaNode]) -> KafkaInfo:
        """The record of a running cluster."""
        first = nodes[0]
        return cls(
            pid=first.pid,
            start_time=first.start_time,
            log=first.log,
            bootstrap=bootstrap_servers(nodes),
            nodes=nodes,
        )

    @property
    def brokers(self) -> int:
        """How many brokers it has."""
        return len(self.nodes) if self.nodes else 1

    def is_alive(self) -> bool:
        """True if the broker runs; for a cluster, if any node runs."""
        if self.nodes:
            return any(node.is_alive() for node in self.nodes)
        return super().is_alive()

    def stop(self) -> None:
        """Stop the broker, or every node of the cluster at once."""
        if self.nodes:
            stop_cluster(self.nodes)
        else:
            super().stop()


class RedisInfo(ProcessInfo):
    address_field = "url"
    url: str


class ModelSimInfo(ProcessInfo):
    address_field = "base_url"
    base_url: str


class ModelRealInfo(ProcessInfo):
    address_field = "base_url"
    base_url: str
    model: str


class StackInfo(BaseModel):
    """The contents of ``stack.json``: one optional section per component."""

    model_config = ConfigDict(frozen=True)

    kafka: KafkaInfo | None = None
    redis: RedisInfo | None = None
    model_sim: ModelSimInfo | None = None
    model_sim_2: ModelSimInfo | None = None  # ``dev up --sims 2`` or 3: more deployments
    model_sim_3: ModelSimInfo | None = None
    model_real: ModelRealInfo | None = None

    def components(self) -> dict[str, ProcessInfo]:
        """The recorded components by name, in start order."""
        found = {name: getattr(self, name) for name in COMPONENTS}
        return {name: info for name, info in found.items() if info is not None}

    def live(self) -> StackInfo:
        """A copy keeping only the components whose process still runs."""
        dead = {name: None for name, info in self.components().items() if not info.is_alive()}
        return self.model_copy(update=dead)


def read_stack(state_dir: Path) -> StackInfo | None:
    """The stack file of ``state_dir`` as recorded (None if there is none)."""
    path = state_dir / STACK_FILE
    try:
        return StackInfo.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise StackError(f"{path} is not a valid stack file ({exc.error_count()} errors)") from exc


def write_stack(state_dir: Path, info: StackInfo) -> None:
    """Replace the stack file of ``state_dir`` with ``info`` (atomically)."""
    path = state_dir / STACK_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(info.model_dump_json(indent=2, exclude_none=True) + "\n")
    os.replace(tmp, path)
