"""The ``promptmill`` command line: parses arguments and dispatches to the commands."""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaConnectionError, KafkaError

from promptmill.commands import (
    admin,
    batch,
    dev,
    evaluate,
    lag,
    models,
    prompt_tests,
    report,
    serve,
    worker,
)
from promptmill.dev.processes import StackError
from promptmill.dev.stack import BROKER_COUNTS
from promptmill.settings import load_settings
from schemas import PromptmillError

Command = Callable[..., Any]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="promptmill", description="Kafka-native prompts as a service."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Command, help_: str, parent: Any = sub) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=func)
        return p

    devp = sub.add_parser("dev", help="the local stack (Kafka, Redis, model)")
    devsub = devp.add_subparsers(dest="dev_command", required=True, metavar="ACTION")
    p = command("up", dev.dev_up, "start Kafka, Redis and the model simulator", devsub)
    p.add_argument("--real-model", action="store_true", help="also serve SmolLM2-135M")
    p.add_argument("--no-sim", action="store_true", help="do not start the simulator")
    p.add_argument(
        "--sims",
        type=int,
        choices=(1, 2, 3),
        default=1,
        help="model simulators to run, each with limits, latency and faults of its own; "
        "with 2 or 3, a model catalog of them is written to the state dir (default: 1)",
    )
    p.add_argument(
        "--brokers",
        type=int,
        choices=BROKER_COUNTS,
        help="Kafka brokers: 3 is a KRaft cluster with replicated topics (default: 1, "
        "or as many as already run)",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="Kafka listens for clients on SASL_SSL only (SCRAM-SHA-512, a CA made at start)",
    )
    command("down", dev.dev_down, "stop the local stack and delete its data", devsub)
    command("status", dev.dev_status, "show what runs where", devsub)
    p = command("model-sim", dev.model_sim, "run the OpenAI-compatible simulator", devsub)
    p.add_argument("sim_args", nargs=argparse.REMAINDER, help="simulator flags (see --help)")
    p.add_help = False

    tp = sub.add_parser("topics", help="create and inspect the topics")
    tsub = tp.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    command("apply", admin.topics_apply, "create or alter the catalog's topics", tsub)
    command("describe", admin.topics_describe, "show the topics as the broker has them", tsub)

    tm = sub.add_parser("templates", help="versioned prompt templates")
    tmsub = tm.add_subparsers(dest="templates_command", required=True, metavar="ACTION")
    p = command("push", admin.templates_push, "publish changed templates from DIR", tmsub)
    p.add_argument("directory", type=Path)
    p.add_argument("--label", help="point this label (e.g. production) at what was pushed")
    p.add_argument(
        "--require-tests",
        action="store_true",
        help="move the label only if each template's NAME.tests.yaml (in DIR) passes on the "
        "version pushed (run through the workers)",
    )
    command("list", admin.templates_list, "list templates, versions and labels", tmsub)
    p = command("show", admin.templates_show, "show NAME, NAME@VERSION or NAME@LABEL", tmsub)
    p.add_argument("ref")
    p = command(
        "test", prompt_tests.templates_test, "run templates' test cases through the pipeline", tmsub
    )
    prompt_tests.add_options(p)
    p = command("label", admin.templates_label, "point NAME@LABEL at VERSION (rollback)", tmsub)
    p.add_argument("name")
    p.add_argument("label")
    p.add_argument("version", type=int)
    p.add_argument(
        "--require-tests",
        type=Path,
        metavar="PATH",
        help="move the label only if NAME's test file (PATH: it, or a directory holding "
        "NAME.tests.yaml) passes on VERSION (on the canary's version, with --canary)",
    )
    p.add_argument(
        "--canary",
        type=admin.canary_option,
        metavar="VERSION:PERCENT",
        help="e.g. 4:10%%: that share of the jobs resolving the label get VERSION (decided "
        "from each job's id at submit: a rerun draws the same)",
    )
    for action, func, help_ in (
        ("promote", admin.templates_promote, "finish NAME@LABEL's canary: the label moves to it"),
        ("rollback", admin.templates_rollback, "abort NAME@LABEL's canary: the label stays"),
    ):
        p = command(action, func, help_, tmsub)
        p.add_argument("name")
        p.add_argument("label")

    p = command("submit", batch.submit, "submit a JSONL file as one batch")
    batch.add_submit_options(p)
    p = command("results", batch.results, "write every terminal record of a batch once")
    p.add_argument("batch")
    p.add_argument("--follow", action="store_true", help="wait until every job is terminal")
    batch.add_output_options(p, "--format")
    p = command("status", batch.status, "a batch's totals, each job counted once")
    p.add_argument("batch")
    p.add_argument("--watch", action="store_true", help="live progress until every job is done")
    p = command("run", batch.run, "submit a file and follow it until every job is terminal")
    batch.add_submit_options(p)
    batch.add_output_options(p)
    batch.add_run_options(p)
    p = command(
        "worker",
        worker.worker,
        "run a processor (prompts, moderation, evals, batches, reporting, outputs)",
    )
    p.add_argument("--processor", choices=list(worker.PROCESSORS), default="prompts")
    p.add_argument("--concurrency", type=int, help="jobs in flight (default: setting)")

    p = command("serve", serve.serve, "the OpenAI-compatible Files and Batches API over HTTP")
    p.add_argument("--host", help="address to listen on (default: PROMPTMILL_SERVE_HOST)")
    p.add_argument("--port", type=int, help="port (default: PROMPTMILL_SERVE_PORT; 0: any)")

    kp = sub.add_parser("keys", help="API keys of the HTTP front door")
    ksub = kp.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = command("create", serve.keys_create, "create a key (printed once)", ksub)
    p.add_argument("tenant")
    p.add_argument(
        "--role",
        action="append",
        choices=["reader", "submitter", "admin"],
        required=True,
        help="repeat for several",
    )
    p.add_argument("--name", help="what the key is for")
    p.add_argument("--model", action="append", help="allow only these models (repeat)")
    p.add_argument("--expires-days", type=float, help="expire after this many days")
    p.add_argument("--budget-usd", type=float, help="spending budget of this key")
    p.add_argument("--budget-period", choices=["day", "month"], default="month")
    p = command("list", serve.keys_list, "list keys (never their secrets)", ksub)
    p.add_argument("--tenant")
    p = command("revoke", serve.keys_revoke, "revoke a key", ksub)
    p.add_argument("key_id")

    tp2 = sub.add_parser("tenants", help="tenant quotas and budgets")
    tsub2 = tp2.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    p = command("set", serve.tenants_set, "set a tenant's quotas and budget", tsub2)
    p.add_argument("tenant")
    p.add_argument("--rpm", type=int, help="requests per minute, fleet-wide")
    p.add_argument("--tpm", type=int, help="tokens per minute, fleet-wide")
    p.add_argument("--budget-usd", type=float, help="USD per period")
    p.add_argument("--budget-period", choices=["day", "month"], default="month")
    command("show", serve.tenants_show, "tenants' quotas and budget use", tsub2)

    mp = sub.add_parser("models", help="the model catalog: groups, deployments, revisions")
    msub = mp.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = command("push", models.models_push, "publish a catalog file as the next revision", msub)
    p.add_argument("file", type=Path, help="the catalog YAML file")
    p = command("list", models.models_list, "model groups and their deployments", msub)
    p.add_argument("--file", type=Path, help="this catalog file, not the one in force")
    p = command("show", models.models_show, "one model group in full", msub)
    p.add_argument("group")
    p.add_argument("--file", type=Path, help="this catalog file, not the one in force")
    p = command("check", models.models_check, "one tiny request to each deployment", msub)
    p.add_argument("group", nargs="?", help="only this group's deployments")
    p.add_argument("--file", type=Path, help="this catalog file, not the one in force")

    p = command("eval", evaluate.evaluate_command, "two template refs over one dataset")
    evaluate.add_options(p)

    p = command("audit", serve.audit, "the audit trail: who did what, when")
    p.add_argument("--since", help="ISO time or a duration back (90m, 2h, 7d)")
    p.add_argument("--tenant", help="only this tenant's objects and keys")
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = command("report", report.report, "usage, cost and latency by template, model, tenant")
    report.add_options(p)
    p = command("lag", lag.lag, "consumer-group lag per partition, computed as KEDA does")
    lag.add_options(p)

    from promptmill import demo  # late: the demo imports the commands above

    p = command("demo", demo.demo, "run the end-to-end demo on a fresh local stack")
    p.add_argument("--jobs", type=Path, default=None, help="input file (default: examples)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        for noisy in ("aiokafka", "httpx", "httpx2", "openai"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        result = args.func(settings, args)
        if inspect.iscoroutine(result):
            asyncio.run(result)
    except (PromptmillError, StackError) as exc:
        sys.exit(f"promptmill: {exc}")
    except KafkaConnectionError as exc:
        sys.exit(f"promptmill: cannot reach Kafka: {exc}")
    except KafkaError as exc:
        sys.exit(f"promptmill: Kafka error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
