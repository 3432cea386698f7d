"""The shared worker runtime: consume, bounded concurrency, ordered commits, dead letters."""

from processors.runtime.offsets import OffsetTracker
from processors.runtime.records import InRecord, Outcome
from processors.runtime.worker import Processor, Worker, WorkerConfig

__all__ = ["InRecord", "OffsetTracker", "Outcome", "Processor", "Worker", "WorkerConfig"]
