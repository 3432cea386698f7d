"""``lag``: a consumer group's lag per partition, as KEDA's Kafka scaler sees it."""

from __future__ import annotations

import argparse

from promptmill import app
from promptmill.settings import Settings
from topics import ConsumerGroup, TopicKind
from topics.lag import group_lag


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (KEDA's lagThreshold must be > 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", help="consumer group (default: the prompt workers' group)")
    parser.add_argument("--topic", action="append", help="topic (default: the jobs topic)")
    parser.add_argument(
        "--threshold", type=positive_int, default=100, help="KEDA lagThreshold (>= 1)"
    )
    parser.add_argument(
        "--offset-reset",
        choices=["latest", "earliest"],
        default="earliest",
        help="KEDA's offsetResetPolicy; promptmill workers start at the earliest offset, so a "
        "ScaledObject for them should say earliest too (KEDA's own default is latest)",
    )
    parser.add_argument("--scale-to-zero-on-invalid", action="store_true")


async def lag(settings: Settings, args: argparse.Namespace) -> None:
    catalog = app.catalog(settings)
    result = await group_lag(
        app.kafka_connection(settings),
        args.group or catalog.group(ConsumerGroup.PROMPTS),
        args.topic or [catalog.name(TopicKind.JOBS)],
        reset=args.offset_reset,
        scale_to_zero_on_invalid=args.scale_to_zero_on_invalid,
    )
    print(f"{'TOPIC':<36} {'PARTITION':>9} {'COMMITTED':>10} {'LOG-END':>10} {'LAG':>8}")
    for row in result.partitions:
        committed = "-" if row.committed is None else str(row.committed)
        print(f"{row.topic:<36} {row.partition:>9} {committed:>10} {row.log_end:>10} {row.lag:>8}")
    print(
        f"group {result.group}: total lag {result.total}; KEDA metric "
        f"{result.keda_metric(args.threshold)} at lagThreshold {args.threshold} -> "
        f"{result.replicas(args.threshold)} replica(s) (max {len(result.partitions)})"
    )
