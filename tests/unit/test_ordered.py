"""Per-partition order: effects happen in offset order even with records in flight at once."""

from __future__ import annotations

import asyncio
import random

from processors.runtime import InRecord
from processors.runtime.ordered import PartitionOrder


async def test_effects_happen_in_offset_order_per_partition() -> None:
    order = PartitionOrder()
    effects: dict[int, list[int]] = {0: [], 1: []}
    rng = random.Random(3)

    async def handle(record: InRecord) -> None:
        async with order(record):
            await asyncio.sleep(rng.random() / 1000)  # a Redis call of varying length
            effects[record.partition].append(record.offset)

    records = [InRecord("t", p, o, None, b"") for o in range(50) for p in (0, 1)]
    await asyncio.gather(*(asyncio.create_task(handle(r)) for r in records))
    assert effects == {0: list(range(50)), 1: list(range(50))}
    assert order(records[0]) is order(records[2]) and order(records[0]) is not order(records[1])
