"""Can faust-streaming keep exact windowed totals across ``kill -9``?

An experiment, not a test: it publishes a stream of "completion" records at a steady rate
into a fresh topic on a real Kafka broker while a faust worker (a subprocess of this module)
repartitions it by ``tenant|template|model`` and sums count, tokens and cost per 1-minute
tumbling window (event time). It kills the worker with SIGKILL a few times while it works
(restarting it each time), lets it finish and then compares the totals it left behind (the
table's changelog and an output topic, last value per window key, read ``read_committed``)
with the exact totals computed from the input.

Usage (against a running broker, e.g. from ``promptmill dev up``)::

    python -m bench.faust_exactness --bootstrap 127.0.0.1:9092
    python -m bench.faust_exactness --bootstrap ... --runs alo:3,eos:3,eos+dedupe:3

A run spec is ``<guarantee>[+direct][+dedupe]:<kills>`` with guarantee ``alo``
(at_least_once) or ``eos`` (exactly_once); ``+dedupe`` drops repeated job ids with a table
keyed by job id; ``+direct`` publishes the input keyed by the aggregate key already, so the
worker needs no group_by (and no repartition topic). The input holds ``--dup-share``
upstream duplicates (same job id twice), so a run without dedupe is judged against the
record totals and a run with dedupe against the unique-job totals. The worker subcommand
(``worker ...``) is internal.
"""
