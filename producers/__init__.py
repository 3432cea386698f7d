"""The client side: submit a batch, follow it, collect its results, push templates."""

from producers.client import BatchReport, Client
from producers.reader import InputFormat, LineError, read_jobs

__all__ = ["BatchReport", "Client", "InputFormat", "LineError", "read_jobs"]
