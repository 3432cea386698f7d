"""A real S3-compatible server on loopback: SeaweedFS, built from its Go module.

Tests of the S3 blob store (:mod:`topics.blobs_s3`) run against SeaweedFS rather than a
mock, so multipart uploads, aborts, ``NoSuchKey`` and request signing are the real thing.
There is no SeaweedFS package for this machine, so :func:`ensure_weed` builds its ``weed``
binary once per pinned version with Go: ``go install module/weed@version`` is refused
because the module's ``go.mod`` has a ``replace`` directive, so a throw-away wrapper
module requires the pinned version, repeats that directive, and ``go build`` links
``weed`` into ``<cache>/tools/weed-<version>``. The first build takes a few minutes on
two cores; every later call returns at once.

:func:`start_s3_server` runs ``weed server -filer -s3`` (master, volume server, filer and
S3 gateway in one process) on free loopback ports with a data directory of its own,
one access key from a generated S3 config, and telemetry off, and returns once the S3
gateway answers and the master can assign a file id (so the first write succeeds).
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from promptmill.dev.processes import (
    StackError,
    free_ports,
    serve,
    stop,
    wait_until,
)

logger = logging.getLogger(__name__)

WEED_MODULE = "github.com/seaweedfs/seaweedfs"
WEED_PACKAGE = f"{WEED_MODULE}/weed"
WEED_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"  # Apache-2.0
# The module's own replace directives: a dependency's are ignored, so the wrapper repeats them.
WEED_REPLACES = ("github.com/tyler-smith/go-bip39=github.com/cosmos/go-bip39@v1.0.0",)
CACHE_DIR = Path(os.environ.get("PROMPTMILL_CACHE_DIR", Path.home() / ".cache" / "promptmill"))
TOOLS_DIR = CACHE_DIR / "tools"
BUILD_TIMEOUT_S = 600.0  # the whole build: module downloads and compilation
READY_TIMEOUT_S = 60.0
# `weed server` stops its volume server and filer at once on SIGTERM, then hangs in the
# master's graceful gRPC stop: a short grace, then SIGKILL (the data is thrown away anyway).
STOP_GRACE_S = 3.0
_SERVICES = ("master", "volume", "filer", "s3")  # in the order of weed_command's port pairs
HOST = "127.0.0.1"
REGION = "us-east-1"
_TAIL_LINES = 20


class WeedBuildError(StackError):
    """The pinned SeaweedFS could not be built (the message has the tail of Go's output)."""


def weed_binary(tools_dir: Path = TOOLS_DIR) -> Path:
    """Where the ``weed`` binary of :data:`WEED_VERSION` is (or will be) cached."""
    return tools_dir / f"weed-{WEED_VERSION}"


def _go(go: str, args: list[str], work: Path, deadline: float) -> None:
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false")
    cmd = [go, *args]
    try:
        result = subprocess.run(
            cmd,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=max(1.0, deadline - time.monotonic()),
        )
    except subprocess.TimeoutExpired as exc:
        raise WeedBuildError(
            f"`{' '.join(cmd)}` timed out (build limit {BUILD_TIMEOUT_S:g}s)"
        ) from exc
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-_TAIL_LINES:])
        raise WeedBuildError(f"`{' '.join(cmd)}` failed ({result.returncode}):\n{tail}")


def ensure_weed(tools_dir: Path = TOOLS_DIR) -> Path:
    """Return the cached ``weed`` binary, building it with Go the first time.

    The build runs in a temporary wrapper module under ``tools_dir``, under a file lock
    (concurrent callers build once), and the binary is renamed into place only when
    complete. Raises :class:`WeedBuildError` if Go is missing or the build fails.
    """
    binary = weed_binary(tools_dir)
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise WeedBuildError("go not found: it is needed once to build SeaweedFS")
    tools_dir.mkdir(parents=True, exist_ok=True)
    with (tools_dir / f"weed-{WEED_VERSION}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file():
            return binary
        started = time.monotonic()
        deadline = started + BUILD_TIMEOUT_S
        logger.info("building SeaweedFS %s into %s (takes minutes once)", WEED_VERSION, binary)
        with tempfile.TemporaryDirectory(dir=tools_dir, prefix=".weed-build-") as tmp:
            work = Path(tmp)
            (work / "go.mod").write_text("module promptmill.local/weedbuild\n\ngo 1.22\n")
            _go(go, ["mod", "edit", *(f"-replace={r}" for r in WEED_REPLACES)], work, deadline)
            _go(go, ["get", f"{WEED_PACKAGE}@{WEED_VERSION}"], work, deadline)
            _go(go, ["build", "-trimpath", "-o", str(work / "weed"), WEED_PACKAGE], work, deadline)
            os.replace(work / "weed", binary)
        logger.info("built SeaweedFS in %.0fs", time.monotonic() - started)
    return binary


@dataclass
class S3Server:
    """A running SeaweedFS with an S3 gateway; stop it with :meth:`stop` (or ``with``)."""

    endpoint_url: str
    access_key: str
    secret_key: str
    directory: Path
    pid: int | None
    grpc_ports: tuple[int, ...] = ()

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.directory / "weed.log"

    def env(self) -> dict[str, str]:
        """Environment variables that point ``S3BlobStore.from_url`` at this server."""
        return {
            "PROMPTMILL_S3_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def stop(self) -> None:
        """SIGTERM the server (SIGKILL after a grace); safe to call twice. Data is kept."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        stop(pid, STOP_GRACE_S)
        # weed puts a unix socket beside each gRPC port at a fixed /tmp path; a killed
        # process leaves them behind.
        for service, port in zip(_SERVICES, self.grpc_ports, strict=False):
            Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock").unlink(missing_ok=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> S3Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


def _status(url: str) -> int | None:
    """The HTTP status ``GET url`` answers with, or None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except OSError:
        return None


def weed_command(weed: Path, directory: Path, ports: list[int], s3_config: Path) -> list[str]:
    """``weed server`` with master, volume, filer and S3 on ``ports`` (8: http and grpc each)."""
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = ports
    return [
        str(weed),
        "server",
        f"-dir={directory / 'data'}",
        *(f"-ip={HOST}", f"-ip.bind={HOST}"),
        *(f"-master.port={master}", f"-master.port.grpc={master_grpc}"),
        *("-master.telemetry=false", "-master.volumeSizeLimitMB=64"),
        *(f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}"),
        *("-volume.max=32", "-volume.preStopSeconds=0"),
        *("-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}"),
        f"-filer.localSocket={directory / 'filer.sock'}",
        *("-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={s3_config}"),
        *("-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={directory / 's3.sock'}"),
    ]


def start_s3_server(
    directory: Path, weed: Path | None = None, timeout: float = READY_TIMEOUT_S
) -> S3Server:
    """Start SeaweedFS with an S3 gateway under ``directory``; return once it serves.

    ``weed`` defaults to :func:`ensure_weed` (which may build it first). If the server
    dies or is not ready within ``timeout`` seconds, it is stopped and
    :class:`~promptmill.dev.processes.StackError` raised with the tail of its log.
    """
    binary = weed if weed is not None else ensure_weed()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    access_key, secret_key = f"PM{secrets.token_hex(8).upper()}", secrets.token_hex(20)
    identity = {
        "name": "promptmill",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    s3_config = directory / "s3.json"
    s3_config.write_text(json.dumps({"identities": [identity]}))
    s3_config.chmod(0o600)
    ports = free_ports(8)
    log = directory / "weed.log"
    started = time.monotonic()
    pid = serve(weed_command(binary, directory, ports, s3_config), log, ports[6], timeout).pid
    endpoint = f"http://{HOST}:{ports[6]}"
    server = S3Server(endpoint, access_key, secret_key, directory, pid, tuple(ports[1::2]))

    def s3_answers() -> bool:  # 403 to an unsigned request, once the config is loaded
        return _status(f"{server.endpoint_url}/") is not None

    def master_assigns() -> bool:  # once a volume server has joined and volumes can grow
        return _status(f"http://{HOST}:{ports[0]}/dir/assign") == 200

    try:
        wait_until(s3_answers, "the S3 gateway answering", timeout, pid, log)
        wait_until(master_assigns, "the master assigning file ids", timeout, pid, log)
    except BaseException:
        server.stop()
        raise
    logger.info(
        "SeaweedFS S3 on %s ready in %.1fs", server.endpoint_url, time.monotonic() - started
    )
    return server
