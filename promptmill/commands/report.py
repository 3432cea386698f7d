"""``report``: usage, cost and latency from the reports topic, grouped and formatted."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path

from producers.chart import write_chart
from producers.reports import DIMENSIONS, group_reports, read_reports, render
from promptmill import app
from promptmill.settings import Settings

_SPAN = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def since(value: str) -> timedelta | None:
    """``30m``, ``1h``, ``7d``, ... or ``all``."""
    if value == "all":
        return None
    found = _SPAN.match(value.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"--since {value!r}: expected e.g. 30m, 1h, 7d or all")
    return timedelta(seconds=int(found.group(1)) * _SECONDS[found.group(2)])


def dimensions(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"--by {', '.join(unknown)}: choose from {', '.join(DIMENSIONS)}"
        )
    return names


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=since, default=timedelta(hours=1), help="30m, 1h, 7d, ... or all"
    )
    parser.add_argument(
        "--by",
        type=dimensions,
        default=["template", "model", "tenant"],
        help="comma-separated grouping: template, model, tenant, group, deployment (the "
        "model catalog's; default: template,model,tenant)",
    )
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")
    parser.add_argument("--per-window", action="store_true", help="one row per window too")
    parser.add_argument("--chart", type=Path, metavar="FILE.png", help="also draw a chart")


async def report(settings: Settings, args: argparse.Namespace) -> None:
    reports = await read_reports(app.kafka_connection(settings), app.catalog(settings), args.since)
    print(render(group_reports(reports, args.by, per_window=args.per_window), args.format))
    if args.chart is not None:
        write_chart(reports, args.by, args.chart)
        print(f"chart written to {args.chart}", file=sys.stderr)
