"""The Kafka node configs and the stack records of a cluster, without starting anything."""

from __future__ import annotations

from pathlib import Path

from promptmill.dev.cluster import KafkaNode, bootstrap_servers, plan_cluster
from promptmill.dev.kafka import (
    NodeAddress,
    render_node_properties,
    render_server_properties,
    replication_for,
)
from promptmill.dev.stack import status
from promptmill.dev.stack_file import KafkaInfo, StackInfo, read_stack, write_stack

NODES = [NodeAddress(1, 19101, 19201), NodeAddress(2, 19102, 19202), NodeAddress(3, 19103, 19203)]
DEAD_PID = 2**22 + 1  # above the largest pid Linux hands out (2**22): never running


def _props(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line]
    props = dict(pairs)
    assert len(props) == len(pairs), "a key is set twice"
    return props


def test_node_2_of_3_is_a_voter_with_its_own_ports_and_replicated_topics(tmp_path: Path) -> None:
    props = _props(render_node_properties(NODES[1], NODES, tmp_path / "node-2" / "data"))

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == (
        "1@127.0.0.1:19201,2@127.0.0.1:19202,3@127.0.0.1:19203"
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19102,CONTROLLER://127.0.0.1:19202"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19102"
    assert props["log.dirs"] == str(tmp_path / "node-2" / "data")
    assert props["offsets.topic.replication.factor"] == "3"
    assert props["transaction.state.log.replication.factor"] == "3"
    assert props["transaction.state.log.min.isr"] == "2"
    assert props["default.replication.factor"] == "3"
    assert props["min.insync.replicas"] == "2"
    assert props["auto.create.topics.enable"] == "false"


def test_every_node_of_a_cluster_differs_only_in_id_ports_and_data(tmp_path: Path) -> None:
    rendered = [_props(render_node_properties(n, NODES, tmp_path / str(n.node_id))) for n in NODES]
    own = {"node.id", "listeners", "advertised.listeners", "log.dirs"}
    shared = [{k: v for k, v in props.items() if k not in own} for props in rendered]
    assert shared[0] == shared[1] == shared[2]
    assert {props["node.id"] for props in rendered} == {"1", "2", "3"}


def test_a_single_broker_keeps_its_unreplicated_config(tmp_path: Path) -> None:
    text = render_server_properties(19092, 19093, tmp_path / "data")
    node = NodeAddress(1, 19092, 19093)
    assert text == render_node_properties(node, [node], tmp_path / "data")
    props = _props(text)
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert "default.replication.factor" not in props
    assert "min.insync.replicas" not in props


def test_replication_follows_the_cluster_size() -> None:
    assert replication_for(1) == (1, 1)
    assert replication_for(2) == (2, 1)
    assert replication_for(3) == (3, 2)
    assert replication_for(5) == (3, 2)


def test_a_planned_cluster_has_six_distinct_ports() -> None:
    planned = plan_cluster(3)
    assert [n.node_id for n in planned] == [1, 2, 3]
    ports = [p for n in planned for p in (n.port, n.controller_port)]
    assert len(set(ports)) == 6


def _node(node_id: int, tmp_path: Path) -> KafkaNode:
    home = tmp_path / "kafka" / f"node-{node_id}"
    return KafkaNode(
        node_id=node_id,
        pid=DEAD_PID,
        start_time=1,
        port=19100 + node_id,
        controller_port=19200 + node_id,
        log=home / "kafka.log",
        home=home,
    )


def test_a_cluster_record_keeps_bootstrap_and_round_trips(tmp_path: Path) -> None:
    nodes = [_node(i, tmp_path) for i in (1, 2, 3)]
    kafka = KafkaInfo.of_cluster(nodes)
    assert kafka.bootstrap == "127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103"
    assert kafka.bootstrap == bootstrap_servers(nodes)
    assert kafka.brokers == 3
    assert (kafka.pid, kafka.log) == (nodes[0].pid, nodes[0].log)
    assert not kafka.is_alive()

    write_stack(tmp_path, StackInfo(kafka=kafka))
    assert read_stack(tmp_path) == StackInfo(kafka=kafka)
    assert status(tmp_path) == [
        ("kafka", kafka.bootstrap, False),
        ("kafka/1", "127.0.0.1:19101", False),
        ("kafka/2", "127.0.0.1:19102", False),
        ("kafka/3", "127.0.0.1:19103", False),
    ]


def test_a_single_broker_record_has_no_nodes(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(
        '{"kafka": {"pid": 4242, "start_time": 9, "log": "/k/kafka.log",'
        ' "bootstrap": "127.0.0.1:39001"}}'
    )
    info = read_stack(tmp_path)
    assert info is not None and info.kafka is not None
    assert info.kafka.nodes is None
    assert info.kafka.brokers == 1
    write_stack(tmp_path, info)
    assert "nodes" not in (tmp_path / "stack.json").read_text()
