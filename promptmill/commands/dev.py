"""``dev up | down | status | model-sim``: the local stack."""

from __future__ import annotations

import argparse

from promptmill.dev import simulator
from promptmill.dev.stack import SIM_NAMES, down, status, up, write_sim_catalog
from promptmill.dev.stack_file import KafkaInfo
from promptmill.settings import Settings


def dev_up(settings: Settings, args: argparse.Namespace) -> None:
    components = {"kafka", "redis"}
    if not args.no_sim:
        components.update(SIM_NAMES[: args.sims])
    if args.real_model:
        components.add("model_real")
    secure = True if args.secure else None  # without the flag, a running Kafka stays as it is
    info = up(settings.state_dir, settings.cache_dir, components, args.brokers, secure)
    for name, proc in info.components().items():
        if isinstance(proc, KafkaInfo) and proc.nodes:
            print(f"{name:<11} {proc.address}  ({proc.brokers} brokers)")
            for n in proc.nodes:
                print(f"  node {n.node_id:<4} {n.bootstrap}  (pid {n.pid}, log {n.log})")
            continue
        print(f"{name:<11} {proc.address}  (pid {proc.pid}, log {proc.log})")
        if isinstance(proc, KafkaInfo) and proc.security is not None:
            sec = proc.security
            print(f"  {sec.mechanism} user {sec.username}, password in {sec.password_file}")
            print(f"  CA {sec.ca_file}")
    catalog = write_sim_catalog(settings.state_dir.resolve(), info)
    if catalog is not None:
        print(f"model catalog of the simulators: {catalog}")
        print(f"  use it with PROMPTMILL_MODEL_CATALOG={catalog}")
    print(f"state in {settings.state_dir}; stop with `promptmill dev down`")


def dev_down(settings: Settings, args: argparse.Namespace) -> None:
    stopped = down(settings.state_dir)
    print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


def dev_status(settings: Settings, args: argparse.Namespace) -> None:
    rows = status(settings.state_dir)
    if not rows:
        print("the local stack is not running (start it with `promptmill dev up`)")
    for name, address, alive in rows:
        print(f"{name:<11} {address:<32} {'running' if alive else 'DEAD'}")


def model_sim(settings: Settings, args: argparse.Namespace) -> None:
    simulator.main(args.sim_args)
