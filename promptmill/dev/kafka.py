"""A real Apache Kafka broker for the local stack, from Maven Central, run with Java 17.

There is no Docker on the development machines, so the local broker is the official
Apache Kafka build run directly on the JVM. The jars are not downloaded as the
release tarball but resolved by Maven from Maven Central: a throw-away pom lists
``kafka_2.13`` and ``kafka-tools`` at the pinned version, and
``mvn dependency:copy-dependencies`` copies them with every runtime dependency into
one ``libs`` folder of the cache. That folder is fetched once per version and then
shared by every state dir and every test run.

The broker runs in KRaft mode as a single node that is both broker and controller,
on two free loopback ports, with its storage formatted freshly by ``StorageTool``
each time it starts. It is never replaced by another broker: if Java 17 or Maven is
missing, :class:`StackError` says how to install them. The same configuration, with
every node in the quorum and the internal topics replicated, serves the nodes of a
cluster (:mod:`promptmill.dev.cluster`).
"""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from promptmill.dev.processes import (
    STOP_TIMEOUT_S,
    StackError,
    Started,
    free_ports,
    spawn,
    stop,
    wait_for_log,
    wait_for_port,
)
from promptmill.dev.secure import SecureMaterial

logger = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
MIN_JAVA = 17
STARTED_MARKER = "Kafka Server started"
BROKER_HEAP = "-Xmx512m"

_INSTALL_HINT = "install them with `apt-get install openjdk-17-jre-headless maven`"
_COMPLETE = ".complete"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.promptmill</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{kafka}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version>
    </dependency>
  </dependencies>
</project>
"""

_PLAINTEXT_LISTENERS = """\
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
"""

_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
{listeners}log.dirs={data_dir}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=3
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
"""

# Only for replicated clusters, so a single broker's file stays exactly as it always was
# (these are Kafka's defaults for one broker anyway).
_REPLICATED_TOPICS = """\
default.replication.factor={replication}
min.insync.replicas={min_isr}
"""

_LOG4J = """\
log4j.rootLogger=WARN, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
"""


def render_pom() -> str:
    """The pom whose runtime dependencies are the pinned Kafka broker and tools."""
    return _POM.format(kafka=KAFKA_VERSION, scala=SCALA_VERSION)


@dataclass(frozen=True)
class NodeAddress:
    """Where one KRaft node listens on 127.0.0.1: its client port and its controller port."""

    node_id: int
    port: int
    controller_port: int


def replication_for(nodes: int) -> tuple[int, int]:
    """(replication factor, min in-sync replicas) of the topics of a ``nodes``-node cluster.

    Three copies with two in sync once there are three nodes (one node may fail without
    losing an acknowledged write or refusing ``acks=all``); fewer nodes, fewer copies.
    """
    replication = min(nodes, 3)
    return replication, max(1, replication - 1)


def render_node_properties(
    node: NodeAddress,
    voters: Sequence[NodeAddress],
    data_dir: Path,
    secure: SecureMaterial | None = None,
) -> str:
    """``server.properties`` of ``node``, broker and controller of the quorum ``voters``.

    With ``secure``, its client and inter-broker listener is SASL_SSL (SCRAM-SHA-512)
    instead of PLAINTEXT (:mod:`promptmill.dev.secure`).
    """
    replication, min_isr = replication_for(len(voters))
    quorum = ",".join(f"{v.node_id}@127.0.0.1:{v.controller_port}" for v in voters)
    if secure is None:
        listeners = _PLAINTEXT_LISTENERS.format(
            port=node.port, controller_port=node.controller_port
        )
    else:
        listeners = secure.render_listeners(node.port, node.controller_port)
    text = _SERVER_PROPERTIES.format(
        node_id=node.node_id,
        voters=quorum,
        listeners=listeners,
        data_dir=data_dir,
        replication=replication,
        min_isr=min_isr,
    )
    if replication > 1:
        text += _REPLICATED_TOPICS.format(replication=replication, min_isr=min_isr)
    return text


def render_server_properties(
    port: int, controller_port: int, data_dir: Path, secure: SecureMaterial | None = None
) -> str:
    """``server.properties`` of a single-node KRaft broker on 127.0.0.1."""
    node = NodeAddress(1, port, controller_port)
    return render_node_properties(node, [node], data_dir, secure)


def render_log4j() -> str:
    """log4j 1 (reload4j) config: WARN to stdout, INFO for the ``kafka`` loggers."""
    return _LOG4J


def new_cluster_id() -> str:
    """A KRaft cluster id: URL-safe base64 of 16 random bytes, without padding.

    Like Kafka's own ``Uuid.randomUuid()``, never one that starts with ``-``: the storage
    tool's argument parser would take it for an option (about 1 id in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def java_executable() -> str:
    """Path of a Java >= 17 (``$JAVA_HOME/bin/java``, else ``java`` on PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home, "bin", "java") if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise StackError(f"java not found (Kafka needs Java {MIN_JAVA}+); {_INSTALL_HINT}")
    result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        raise StackError(f"cannot read the Java version from `{java} -version`")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8.0_292" is Java 8
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise StackError(f"{java} is Java {major}; Kafka needs Java {MIN_JAVA}+; {_INSTALL_HINT}")
    return java


def kafka_tool_command(
    libs: Path, main_class: str, log4j: Path, *, jvm_options: tuple[str, ...] = ()
) -> list[str]:
    """The java command prefix running ``main_class`` from the Kafka ``libs`` folder.

    Append the tool's own arguments, e.g. ``["--bootstrap-server", ..., "--list"]``.
    """
    return [
        java_executable(),
        *jvm_options,
        "-cp",
        f"{libs}/*",
        f"-Dlog4j.configuration=file:{log4j}",
        main_class,
    ]


def _run_maven(work: Path, libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(f"mvn not found (needed once to fetch Kafka); {_INSTALL_HINT}")
    pom = work / "pom.xml"
    pom.write_text(render_pom())
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies"]
    cmd += ["-DincludeScope=runtime", f"-DoutputDirectory={libs}"]
    logger.info("fetching Kafka %s from Maven Central into %s", KAFKA_VERSION, libs)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise StackError("mvn did not finish fetching Kafka within 900s") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
        raise StackError(f"mvn failed to fetch Kafka {KAFKA_VERSION}:\n{tail}")


def fetch_kafka(cache_dir: Path) -> Path:
    """Return ``cache_dir/kafka-<version>/libs``, fetching the jars the first time.

    The fetch happens in a temporary folder that is renamed into place only when
    complete, under a file lock, so concurrent callers fetch once.
    """
    target = cache_dir.resolve() / f"kafka-{KAFKA_VERSION}"
    libs = target / "libs"
    if (target / _COMPLETE).is_file():
        return libs
    java_executable()  # Maven needs Java too: fail early with the clear message.
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f"kafka-{KAFKA_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _COMPLETE).is_file():
            return libs
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".fetch-") as tmp:
            staged = Path(tmp, target.name)
            _run_maven(Path(tmp), staged / "libs")
            if not any((staged / "libs").glob(f"kafka_{SCALA_VERSION}-*.jar")):
                raise StackError(f"mvn finished but fetched no kafka_{SCALA_VERSION} jar")
            (staged / _COMPLETE).write_text(f"{KAFKA_VERSION}\n")
            shutil.rmtree(target, ignore_errors=True)  # a partial fetch from a crash
            os.replace(staged, target)
    logger.info("Kafka %s ready in %s", KAFKA_VERSION, libs)
    return libs


def start_kafka(
    cache_dir: Path, home: Path, timeout: float = 90.0, secure: SecureMaterial | None = None
) -> Started:
    """Fetch (once), configure, format and start a broker under ``home``; wait for it.

    The broker is ready when its log says it started and its port accepts. With
    ``secure``, its only client listener is SASL_SSL and its storage is formatted with
    the SCRAM users of ``secure``.
    """
    libs = fetch_kafka(cache_dir)
    port, controller_port = free_ports(2)
    properties = render_server_properties(port, controller_port, home / "data", secure)
    scram = secure.scram_arguments() if secure is not None else []
    config = format_storage(libs, home, properties, new_cluster_id(), scram)
    log = home / "kafka.log"
    pid = spawn(broker_command(libs, config), log)
    try:
        wait_for_log(log, STARTED_MARKER, timeout, pid)
        wait_for_port("127.0.0.1", port, 10.0, pid, log)
    except BaseException:
        stop(pid, STOP_TIMEOUT_S)
        raise
    return Started(pid, port, log)


def format_storage(
    libs: Path, home: Path, properties: str, cluster_id: str, extra_args: Sequence[str] = ()
) -> Path:
    """Write ``properties`` and the log4j config under ``home``; format a fresh ``home/data``.

    ``properties`` must name ``home/data`` as its ``log.dirs``; every node of one cluster
    is formatted with the same ``cluster_id``. ``extra_args`` go to ``StorageTool format``
    (``--add-scram ...``). Returns the path of ``server.properties`` (0600: a secure
    broker's holds a password); ``log4j.properties`` sits beside it.
    """
    data_dir = home / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    config = home / "server.properties"
    config.unlink(missing_ok=True)
    config.touch(mode=0o600)
    config.write_text(properties)
    log4j = home / "log4j.properties"
    log4j.write_text(render_log4j())
    cmd = kafka_tool_command(libs, "kafka.tools.StorageTool", log4j)
    cmd += ["format", f"--cluster-id={cluster_id}", "-c", str(config), *extra_args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise StackError(f"formatting the Kafka storage failed:\n{tail}")
    return config


def broker_command(libs: Path, config: Path, heap: str = BROKER_HEAP) -> list[str]:
    """The command running the broker configured by ``config`` (formatted first)."""
    log4j = config.with_name("log4j.properties")
    return [*kafka_tool_command(libs, "kafka.Kafka", log4j, jvm_options=(heap,)), str(config)]
