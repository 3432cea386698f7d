"""The local stack: a real Kafka broker and a real redis-server, up, idempotent, down."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import redis

from promptmill.dev.kafka import (
    KAFKA_VERSION,
    SCALA_VERSION,
    new_cluster_id,
    render_pom,
    render_server_properties,
)
from promptmill.dev.processes import is_alive
from promptmill.dev.stack import (
    SIM_NAMES,
    STACK_FILE,
    StackInfo,
    down,
    load_stack,
    status,
    up,
    write_sim_catalog,
)

CACHE = Path(os.environ.get("PROMPTMILL_CACHE_DIR", Path.home() / ".cache" / "promptmill"))


def test_rendering_pins_the_version_and_ports(tmp_path: Path) -> None:
    pom = render_pom()
    assert f"<artifactId>kafka_{SCALA_VERSION}</artifactId>" in pom
    assert f"<version>{KAFKA_VERSION}</version>" in pom
    assert "<artifactId>kafka-tools</artifactId>" in pom

    props = render_server_properties(19092, 19093, tmp_path / "data")
    lines = set(props.splitlines())
    assert "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093" in lines
    assert "advertised.listeners=PLAINTEXT://127.0.0.1:19092" in lines
    assert "controller.quorum.voters=1@127.0.0.1:19093" in lines
    assert f"log.dirs={tmp_path / 'data'}" in lines
    assert "auto.create.topics.enable=false" in lines
    assert "group.min.session.timeout.ms=1000" in lines


def _pids(info: StackInfo) -> list[int]:
    return [proc.pid for proc in info.components().values()]


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_up_status_idempotent_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        first = up(state, CACHE, {"kafka", "redis"})
        assert first.kafka is not None
        assert first.redis is not None
        assert sorted(status(state)) == [
            ("kafka", first.kafka.bootstrap, True),
            ("redis", first.redis.url, True),
        ]
        assert (state / STACK_FILE).is_file()

        second = up(state, CACHE, {"kafka", "redis"})
        assert second == first
        assert load_stack(state) == first

        host, port = first.kafka.bootstrap.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            pass
        with redis.Redis.from_url(first.redis.url, socket_timeout=5) as client:
            assert client.ping() is True
    finally:
        stopped = down(state)

    assert sorted(stopped) == ["kafka", "redis"]
    assert not any(alive for _, _, alive in status(state))
    assert load_stack(state) is None
    assert not any(is_alive(pid) for pid in _pids(first))
    assert not (state / "kafka" / "data").exists()
    assert not (state / "redis" / "data").exists()


def test_cluster_ids_never_look_like_options() -> None:
    ids = {new_cluster_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert not any(i.startswith("-") for i in ids)
    assert all(len(i) == 22 for i in ids)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_three_simulators_and_their_catalog(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        info = up(state, CACHE, SIM_NAMES)
        catalog = write_sim_catalog(state, info)
        assert catalog is not None and catalog.is_file()
        env = dict(os.environ, PROMPTMILL_MODEL_CATALOG=str(catalog))
        checked = subprocess.run(
            [sys.executable, "-m", "promptmill", "models", "check"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0, checked.stderr
        rows = {line.split()[1]: line for line in checked.stdout.splitlines() if line.strip()}
        assert set(rows) == {"sim-1", "sim-2", "sim-3"} and all(" ok " in r for r in rows.values())
        # each with its own limits; the third through its Azure-shaped path
        assert "limit-requests=1200" in rows["sim-2"] and "limit-requests=600" in rows["sim-3"]
        assert info.model_sim_3 is not None
        stats_url = info.model_sim_3.base_url.removesuffix("/v1") + "/sim/stats"
        with urllib.request.urlopen(stats_url, timeout=10) as response:
            stats = json.loads(response.read())
        assert stats["azure"] == 1
    finally:
        stopped = down(state)
    assert sorted(stopped) == sorted(SIM_NAMES)
    assert not catalog.exists()
