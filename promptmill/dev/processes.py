"""Background processes of the local stack: spawn, watch, wait for, stop.

Every server of the local stack (Kafka, Redis, the model simulator, the real small
model) is a plain OS process that must outlive the ``promptmill dev up`` command that
started it. Each one is spawned in a session of its own (so a Ctrl-C in the terminal
does not reach it and the whole group can be signalled at once), with stdin from
``/dev/null`` and stdout and stderr appended to one log file.

Processes are spawned with :func:`os.posix_spawnp` rather than :class:`subprocess.Popen`:
no ``Popen`` object is left behind to warn "still running" when it is garbage
collected, and the child is known only by its pid, exactly as a later CLI call that
reads ``stack.json`` knows it.

A process is identified by its pid *and* its start time (from ``/proc``), so a pid
that the kernel reused for an unrelated program after a reboot is never signalled.
Waiting helpers raise :class:`StackError` with the tail of the log when the process
dies or the time runs out: the user sees why, not just that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

logger = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0  # SIGTERM grace before SIGKILL, for every stack process
_POLL_S = 0.1
_TAIL_LINES = 20


class StackError(Exception):
    """The local stack could not be started, inspected or stopped (message says why)."""


class Started(NamedTuple):
    """A server process that answers: its pid, its loopback port and its log file."""

    pid: int
    port: int
    log: Path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def spawn(cmd: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None) -> int:
    """Start ``cmd`` detached in a new session, output to ``log_file``; return its pid.

    A previous ``log_file`` is kept as ``<name>.1``. The child is not tied to the
    caller: it keeps running after the calling process exits.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if log_file.exists():
        os.replace(log_file, log_file.with_name(log_file.name + ".1"))
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawnp(
            cmd[0],
            list(cmd),
            dict(os.environ if env is None else env),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsid=True,
        )
    except OSError as exc:
        raise StackError(f"cannot start {cmd[0]}: {exc}") from exc
    finally:
        os.close(fd)
    logger.info("spawned pid %s: %s (log %s)", pid, cmd[0], log_file)
    return pid


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own exited child (no zombie left)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state on (None when unavailable)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, or None if unknown."""
    fields = _proc_stat(pid)
    # Field 22 of stat is starttime; fields[0] here is field 3 (state).
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie, exited but not yet reaped, counts as dead)."""
    _reap(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(pid)
    return fields is None or fields[0] not in ("Z", "X")


def runs(pid: int, start_time: int | None) -> bool:
    """True if the process recorded as (``pid``, ``start_time``) still runs.

    A pid the kernel reused for another program has another start time: it does not count.
    """
    return is_alive(pid) and process_start_time(pid) == start_time


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(pid):
            return True
        time.sleep(_POLL_S)
    return not is_alive(pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def kill(pid: int) -> None:
    """SIGKILL the process group of ``pid`` (``kill -9``: no shutdown) and wait until dead."""
    _signal_group(pid, signal.SIGKILL)
    if not _wait_dead(pid, 5.0):
        raise StackError(f"pid {pid} is still alive after SIGKILL")


def stop(pid: int, timeout: float) -> None:
    """SIGTERM the process group of ``pid``; SIGKILL it if still alive after ``timeout``."""
    stop_all([pid], timeout)


def stop_all(pids: Iterable[int], timeout: float) -> None:
    """:func:`stop` several process groups at once: SIGTERM all, then one shared grace.

    Servers that need each other to shut down cleanly (the nodes of a Kafka quorum) are
    signalled together rather than one after another.
    """
    alive = [pid for pid in pids if is_alive(pid)]
    for pid in alive:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for pid in alive:
        if _wait_dead(pid, max(0.0, deadline - time.monotonic())):
            logger.info("pid %s stopped", pid)
            continue
        logger.warning("pid %s ignored SIGTERM for %ss; sending SIGKILL", pid, timeout)
        kill(pid)


def log_tail(log_file: Path, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of ``log_file`` ('' if it does not exist)."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _failure(what: str, pid: int, log_file: Path, timeout: float) -> StackError:
    if is_alive(pid):
        reason = f"timed out after {timeout:g}s waiting for {what}"
    else:
        reason = f"process {pid} exited while waiting for {what}"
    return StackError(f"{reason}; last lines of {log_file}:\n{log_tail(log_file)}")


def wait_until(
    check: Callable[[], bool], what: str, timeout: float, pid: int, log_file: Path
) -> None:
    """Poll ``check`` until it is true while ``pid`` stays alive, else raise StackError.

    ``what`` names the awaited event in the error, e.g. ``"GET /v1/models answering"``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and is_alive(pid):
        if check():
            return
        time.sleep(_POLL_S)
    raise _failure(what, pid, log_file, timeout)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, pid: int, log_file: Path) -> None:
    """Wait until ``host:port`` accepts TCP connections while ``pid`` stays alive."""
    what = f"port {host}:{port} accepting connections"
    wait_until(lambda: _accepts(host, port), what, timeout, pid, log_file)


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            status: int = response.status
            return status == 200
    except urllib.error.HTTPError as exc:
        exc.close()
        return False
    except OSError:  # URLError, refused, reset, timeout
        return False


def wait_for_http(url: str, timeout: float, pid: int, log_file: Path) -> None:
    """Wait until ``GET url`` answers 200 while ``pid`` stays alive."""
    wait_until(lambda: _answers_200(url), f"GET {url} answering 200", timeout, pid, log_file)


def wait_for_log(log_file: Path, needle: str, timeout: float, pid: int) -> None:
    """Wait until ``needle`` appears in ``log_file`` while ``pid`` stays alive."""
    wanted = needle.encode()
    seen = b""
    offset = 0

    def found() -> bool:
        nonlocal seen, offset
        try:
            with log_file.open("rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
        except FileNotFoundError:
            return False
        offset += len(chunk)
        # Keep just enough of the previous read to find a needle split across reads.
        seen = seen[-len(wanted) :] + chunk
        return wanted in seen

    wait_until(found, f"{needle!r} in the log", timeout, pid, log_file)


def serve(
    cmd: Sequence[str],
    log_file: Path,
    port: int,
    timeout: float,
    env: Mapping[str, str] | None = None,
    ready_url: str | None = None,
) -> Started:
    """Spawn a server on 127.0.0.1:``port`` and wait until it accepts connections.

    With ``ready_url``, also wait until ``GET ready_url`` answers 200. If the server
    dies or is not ready within ``timeout`` seconds (each wait), it is stopped and
    :class:`StackError` raised with the tail of its log.
    """
    pid = spawn(cmd, log_file, env)
    try:
        wait_for_port("127.0.0.1", port, timeout, pid, log_file)
        if ready_url is not None:
            wait_for_http(ready_url, timeout, pid, log_file)
    except BaseException:
        stop(pid, STOP_TIMEOUT_S)
        raise
    return Started(pid, port, log_file)
