"""The faust side of the experiment: the app, its windowed table, and the worker entry."""

from __future__ import annotations

import argparse
from datetime import timedelta
from pathlib import Path
from typing import Any

import faust

from bench.faust_exactness.common import WINDOW_S


class Completion(faust.Record, serializer="json"):  # type: ignore[call-arg,misc]
    """One finished completion, as the upstream worker publishes it."""

    job_id: str
    tenant: str
    template: str
    model: str
    tokens: int
    cost_micros: int
    created_at: float


def agg_key(rec: Completion) -> str:
    return f"{rec.tenant}|{rec.template}|{rec.model}"


def _zero() -> list[int]:
    return [0, 0, 0]


def build_app(
    *,
    bootstrap: str,
    app_id: str,
    input_topic: str,
    output_topic: str,
    guarantee: str,
    store: str,
    partitions: int,
    dedupe: bool,
    direct: bool,
    datadir: Path,
) -> Any:
    """The faust app: group_by(agg key) -> dedupe (optional) -> tumbling-window sums.

    ``direct``: the input is already keyed by the aggregate key, so no group_by.
    """
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store=store,
        processing_guarantee=guarantee,
        topic_partitions=partitions,
        topic_replication_factor=1,
        web_enabled=False,
        datadir=str(datadir),
        # a SIGKILLed member holds its partitions until its session times out
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(input_topic, key_type=bytes, value_type=Completion)
    sink = app.topic(output_topic, key_serializer="raw", value_serializer="json")
    totals = (
        app.Table("totals", default=_zero, partitions=partitions)
        .tumbling(WINDOW_S, expires=timedelta(hours=2))
        .relative_to_field(Completion.created_at)  # type: ignore[arg-type]  # a FieldDescriptor at runtime
    )
    seen = app.Table("seen", default=int, partitions=partitions) if dedupe else None

    def first_sighting(rec: Completion) -> bool:
        assert seen is not None
        if rec.job_id in seen:
            return False
        seen[rec.job_id] = 1
        return True

    @app.agent(source)
    async def aggregate(stream: Any) -> None:
        if seen is not None:
            # NB: faust moves processors added before group_by() to the repartitioned
            # stream (Stream._chain), so this filter runs after the repartition, in the
            # table stage. That is fine here: one job id always maps to one agg key,
            # hence to one repartition partition.
            stream = stream.filter(first_sighting)
        if not direct:
            # the repartition topic is named <agent name>-<input topic>-<name>-repartition,
            # without the app id: put it into ``name`` or two apps share one topic
            stream = stream.group_by(agg_key, name=f"{app_id}-agg")
        async for rec in stream:
            key = agg_key(rec)
            count, tokens, cost = totals[key].value()
            new = [count + 1, tokens + rec.tokens, cost + rec.cost_micros]
            totals[key] = new
            start = int(rec.created_at // WINDOW_S * WINDOW_S)
            await sink.send(
                key=f"{key}@{start}".encode(),
                value={"count": new[0], "tokens": new[1], "cost_micros": new[2]},
            )

    return app


def worker_main(args: argparse.Namespace) -> None:
    app = build_app(
        bootstrap=args.bootstrap,
        app_id=args.app_id,
        input_topic=args.input,
        output_topic=args.output,
        guarantee=args.guarantee,
        store=args.store,
        partitions=args.partitions,
        dedupe=args.dedupe,
        direct=args.direct,
        datadir=Path(args.datadir),
    )
    faust.Worker(app, loglevel="INFO").execute_from_commandline()
