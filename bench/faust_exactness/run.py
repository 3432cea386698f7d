"""One run (start, kill -9, restart, finish, compare), the report table, and ``main``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.faust_exactness.app import worker_main
from bench.faust_exactness.common import WORK_ROOT
from bench.faust_exactness.data import (
    Diff,
    Input,
    create_topics,
    diff,
    last_values_changelog,
    last_values_sink,
    produce,
    read_topic,
    state_resets,
)


@dataclass(frozen=True)
class RunSpec:
    guarantee: str  # at_least_once | exactly_once
    direct: bool
    dedupe: bool
    kills: int

    @classmethod
    def parse(cls, text: str) -> RunSpec:
        m = re.fullmatch(r"(alo|eos)(\+direct)?(\+dedupe)?:(\d+)", text.strip())
        if not m:
            raise argparse.ArgumentTypeError(f"bad run spec {text!r}")
        g = "at_least_once" if m[1] == "alo" else "exactly_once"
        return cls(g, bool(m[2]), bool(m[3]), int(m[4]))

    @property
    def label(self) -> str:
        short = "alo" if self.guarantee == "at_least_once" else "eos"
        flags = ("+direct" if self.direct else "") + ("+dedupe" if self.dedupe else "")
        return f"{short}{flags}, {self.kills} x kill -9"


@dataclass
class RunResult:
    spec: RunSpec
    app_id: str
    kills_done: int = 0
    starts: int = 0
    self_exits: list[int] = field(default_factory=list)
    timed_out: bool = False
    stalled_s: float = 0.0
    wall_s: float = 0.0
    graceful_stop: bool = True
    changelog: Diff | None = None
    sink: Diff | None = None
    expected: tuple[int, int, int] = (0, 0, 0)
    changelog_msgs: tuple[int, int] = (0, 0)  # read_committed, read_uncommitted
    repartition_msgs: tuple[int, int] = (0, 0)
    input_msgs: int = 0
    input_committed: int = 0  # the group's committed input offsets, summed, at the end
    resets: int = 0
    error_lines: list[str] = field(default_factory=list)
    kill_points: list[str] = field(default_factory=list)


class Worker:
    """One worker subprocess after another, logging to ``<workdir>/worker-<n>.log``."""

    def __init__(self, argv: list[str], workdir: Path) -> None:
        self.argv = argv
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.n = 0

    def start(self) -> None:
        self.n += 1
        log = (self.workdir / f"worker-{self.n}.log").open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],  # the repository root
            start_new_session=True,
        )
        log.close()

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    async def stop(self, grace_s: float) -> bool:
        """SIGTERM and wait; SIGKILL after ``grace_s``. True if it stopped by itself."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return True
            await asyncio.sleep(0.5)
        self.kill9()
        return False


async def find_topic(bootstrap: str, suffix: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names: list[str] = [t for t in await admin.list_topics() if t.endswith(suffix)]
    finally:
        await admin.close()
    if len(names) != 1:
        raise RuntimeError(f"expected one topic *{suffix}, found {names}")
    return names[0]


async def group_progress(admin: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    except Exception:  # group not there yet / coordinator moving
        return {}
    return {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}


ERROR_RE = re.compile(r"\[(ERROR|CRITICAL)\]|Traceback|Error:|Exception", re.IGNORECASE)


def collect_errors(workdir: Path, limit: int = 40) -> list[str]:
    lines: list[str] = []
    for log in sorted(workdir.glob("worker-*.log"), key=lambda p: int(p.stem.split("-")[1])):
        for line in log.read_text(errors="replace").splitlines():
            if ERROR_RE.search(line):
                lines.append(f"{log.name}: {line.strip()[:300]}")
    counted = Counter(re.sub(r"\d", "#", ln) for ln in lines)
    uniq: list[str] = []
    seen: set[str] = set()
    for ln in lines:
        shape = re.sub(r"\d", "#", ln)
        if shape not in seen:
            seen.add(shape)
            n = counted[shape]
            uniq.append(ln if n == 1 else f"{ln}   [x{n}]")
    return uniq[:limit]


async def run_one(
    bootstrap: str,
    inp: Input,
    spec: RunSpec,
    partitions: int,
    store: str,
    run_timeout: float,
    rate: float,
    seed: int,
) -> RunResult:
    flags = ("-direct" if spec.direct else "") + ("-dd" if spec.dedupe else "")
    app_id = f"fxprobe-{spec.guarantee}{flags}-{uuid.uuid4().hex[:6]}"
    workdir = WORK_ROOT / app_id
    workdir.mkdir(parents=True, exist_ok=True)
    output = f"{app_id}-out"
    input_topic = f"{app_id}-in"
    await create_topics(bootstrap, [input_topic, output], partitions)
    argv = [
        sys.executable,
        "-m",
        "bench.faust_exactness",
        "worker",
        "--bootstrap",
        bootstrap,
        "--app-id",
        app_id,
        "--input",
        input_topic,
        "--output",
        output,
        "--guarantee",
        spec.guarantee,
        "--store",
        store,
        "--partitions",
        str(partitions),
        "--datadir",
        str(workdir / "data"),
        *(["--dedupe"] if spec.dedupe else []),
        *(["--direct"] if spec.direct else []),
    ]
    (workdir / "argv.txt").write_text(" ".join(argv) + "\n")
    res = RunResult(spec, app_id)
    expected_totals = inp.by_unique if spec.dedupe else inp.by_records
    res.expected = tuple(sum(v[i] for v in expected_totals.values()) for i in range(3))  # type: ignore[assignment]
    rng = random.Random(seed)
    kill_at = [(i + 1) / (spec.kills + 1) for i in range(spec.kills)]
    changelog = f"{app_id}-totals-changelog"
    repart_suffix = f"-{input_topic}-{app_id}-agg-repartition"

    worker = Worker(argv, workdir)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    t0 = time.monotonic()
    feed = asyncio.create_task(produce(bootstrap, input_topic, inp.records, rate, spec.direct))
    try:
        worker.start()
        res.starts = 1
        last_sig: tuple[int, int] | None = None
        last_change = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if now - t0 > run_timeout:
                res.timed_out = True
                break
            rc = worker.exited()
            if rc is not None:  # it died on its own: note it and start it again
                res.self_exits.append(rc)
                if len(res.self_exits) > 5:
                    break
                worker.start()
                res.starts += 1
            offsets = await group_progress(admin, app_id)
            done_in = sum(o for tp, o in offsets.items() if tp.topic == input_topic)
            done_agg = sum(o for tp, o in offsets.items() if tp.topic.endswith(repart_suffix))
            res.input_committed = done_in
            sig = (done_in, done_agg)
            if sig != last_sig:
                last_sig, last_change = sig, now
            res.stalled_s = max(res.stalled_s, now - last_change)
            if kill_at and done_in >= kill_at[0] * len(inp.records):
                await asyncio.sleep(rng.uniform(0.0, 1.5))  # land mid-batch
                worker.kill9()
                res.kill_points.append(f"{done_in}")
                kill_at.pop(0)
                res.kills_done += 1
                worker.start()
                res.starts += 1
                last_change = time.monotonic()
                continue
            # finished: all input committed, nothing moved for 15 s
            if feed.done() and done_in >= len(inp.records) and now - last_change > 15:
                break
        res.graceful_stop = await worker.stop(grace_s=60)
    finally:
        worker.kill9()
        await admin.close()
        if not feed.done():
            feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
    res.wall_s = time.monotonic() - t0

    res.input_msgs = len(await read_topic(bootstrap, input_topic))
    rows_c = await read_topic(bootstrap, changelog, "read_committed")
    rows_u = await read_topic(bootstrap, changelog, "read_uncommitted")
    res.changelog_msgs = (len(rows_c), len(rows_u))
    if not spec.direct:
        repart = await find_topic(bootstrap, repart_suffix)
        rep_c = await read_topic(bootstrap, repart, "read_committed")
        rep_u = await read_topic(bootstrap, repart, "read_uncommitted")
        res.repartition_msgs = (len(rep_c), len(rep_u))
    res.changelog = diff(last_values_changelog(rows_c), expected_totals)
    res.resets = state_resets(rows_c)
    res.sink = diff(last_values_sink(await read_topic(bootstrap, output)), expected_totals)
    res.error_lines = collect_errors(workdir)
    return res


# --------------------------------------------------------------------------- report


def _pair(p: tuple[int, int]) -> str:
    return f"{p[0]:,}/{p[1]:,}"


def _signed(n: int) -> str:
    return f"{n:+,}" if n else "0"


def report(results: list[RunResult], inp: Input, args: argparse.Namespace) -> str:
    lines = [
        f"faust-streaming {_version('faust-streaming')}, aiokafka {_version('aiokafka')}, "
        f"store {args.store}, {args.partitions} partitions; input {len(inp.records):,} records "
        f"at {args.rate:.0f}/s ({inp.unique:,} unique job ids, "
        f"{len(inp.records) - inp.unique:,} upstream repeats), "
        f"{len(inp.by_records)} window keys",
        "",
        "| run | input msgs / committed | expected count / tokens | Δcount changelog "
        "| Δtokens changelog | Δcount sink | windows wrong (chg/sink) "
        "| changelog msgs committed/all | repartition msgs committed/all | starts, self-exits "
        "| kill points (input committed) | state resets | stop | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, s = r.changelog, r.sink
        assert c is not None and s is not None
        stop = "timeout" if r.timed_out else ("SIGTERM ok" if r.graceful_stop else "needed kill")
        lines.append(
            f"| {r.spec.label} | {r.input_msgs:,} / {r.input_committed:,} "
            f"| {r.expected[0]:,} / {r.expected[1]:,} "
            f"| {_signed(c.count)} "
            f"| {_signed(c.tokens)} | {_signed(s.count)} "
            f"| {c.windows_wrong}/{s.windows_wrong} of {c.windows_expected} "
            f"| {r.changelog_msgs[0]:,}/{r.changelog_msgs[1]:,} "
            f"| {_pair(r.repartition_msgs) if not r.spec.direct else 'none'} "
            f"| {r.starts}, {r.self_exits or '-'} | {', '.join(r.kill_points) or '-'} "
            f"| {r.resets} | {stop} | {r.wall_s:.0f} |"
        )
    lines += ["", f"command: {' '.join(['python -m bench.faust_exactness', *sys.argv[1:]])}"]
    for r in results:
        if r.error_lines:
            lines += ["", f"error lines, {r.spec.label} ({r.app_id}, logs in {WORK_ROOT}):"]
            lines += [f"    {ln}" for ln in r.error_lines]
    return "\n".join(lines)


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


async def orchestrate(args: argparse.Namespace) -> None:
    if args.store.startswith("rocksdb") and not (
        importlib.util.find_spec("rocksdict") or importlib.util.find_spec("rocksdb")
    ):
        sys.exit("store rocksdb:// needs rocksdict (or python-rocksdb); neither is installed")
    inp = Input.make(args.records, args.dup_share, args.seed)
    results = []
    for i, spec in enumerate(args.runs):
        print(f"run {spec.label} ...", flush=True)
        r = await run_one(
            args.bootstrap,
            inp,
            spec,
            args.partitions,
            args.store,
            args.run_timeout,
            args.rate,
            args.seed + i,
        )
        assert r.changelog is not None
        print(
            f"  {r.app_id}: Δcount changelog {r.changelog.count:+}, "
            f"windows wrong {r.changelog.windows_wrong}, {r.wall_s:.0f} s",
            flush=True,
        )
        results.append(r)
    print()
    print(report(results, inp, args))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faust_exactness")
    sub = parser.add_subparsers(dest="cmd")
    w = sub.add_parser("worker", help="internal: one faust worker")
    for name in ("--bootstrap", "--app-id", "--input", "--output", "--datadir"):
        w.add_argument(name, required=True)
    w.add_argument("--guarantee", default="at_least_once")
    w.add_argument("--store", default="memory://")
    w.add_argument("--partitions", type=int, default=6)
    w.add_argument("--dedupe", action="store_true")
    w.add_argument("--direct", action="store_true")
    parser.add_argument("--bootstrap")
    parser.add_argument("--records", type=int, default=20_000, help="unique completions")
    parser.add_argument("--dup-share", type=float, default=0.03)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--store", default="memory://")
    parser.add_argument(
        "--runs",
        type=lambda s: [RunSpec.parse(x) for x in s.split(",")],
        default=[RunSpec.parse(x) for x in ("alo:3", "eos:3", "eos+dedupe:3")],
    )
    parser.add_argument("--run-timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rate", type=float, default=300.0, help="input records per second")
    args = parser.parse_args(argv)
    if args.cmd == "worker":
        worker_main(args)
        return
    if not args.bootstrap:
        parser.error("--bootstrap is required")
    asyncio.run(orchestrate(args))


if __name__ == "__main__":
    main()
