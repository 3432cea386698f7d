"""What a processor that calls the model through the fleet's limits starts and stops."""

from __future__ import annotations

from processors.fleet import FleetState
from processors.model import ModelClient


class ModelUser:
    """Holds a :class:`ModelClient` and the :class:`FleetState` its calls go through."""

    def __init__(self, model: ModelClient, fleet: FleetState) -> None:
        self._model = model
        self._fleet = fleet

    async def start(self) -> None:
        await self._model.start()

    async def stop(self) -> None:
        await self._fleet.close()  # its ping of a Redis that went away
        await self._model.stop()
