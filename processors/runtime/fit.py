"""Outcomes that always fit: no record can stall its partition by being too large.

A broker refuses a record over its topic's ``max.message.bytes`` with a non-retriable
error. Were the worker to retry it, the partition would never commit again; were it to
drop it, a job would be lost. So before publishing, each outcome is measured against the
real limit of its topic (:class:`topics.limits.TopicLimits`, read from the broker):

- a result that would not fit (a huge completion, a routed copy) becomes the record's dead
  letter, code ``output_too_large``, instead;
- a dead letter that would not fit (an operator set a tiny limit on the failures topic) is
  shrunk: payload prefix and metadata dropped, message cut; its size and sha256 stay.

If the broker still refuses (the limit was lowered since it was read), the limit is read
again and the outcome fitted again.
"""

from __future__ import annotations

from processors.runtime.records import Outcome
from schemas import ErrorCode, Failure, PromptmillError, decode, encode
from topics.limits import RECORD_OVERHEAD

SHRUNK_MESSAGE_CHARS = 300


class OutcomeTooLarge(PromptmillError):
    """A result that would not fit the topic it goes to."""

    code = ErrorCode.OUTPUT_TOO_LARGE


def size_of(outcome: Outcome) -> int:
    """What the outcome costs against ``max.message.bytes`` (an upper bound)."""
    headers = sum(len(k) + len(v) for k, v in outcome.headers)
    return len(outcome.value) + len(outcome.key or b"") + headers + RECORD_OVERHEAD


def shrink(outcome: Outcome) -> Outcome:
    """A dead letter without its payload prefix and metadata, its message cut short."""
    failure = decode(outcome.value, Failure)
    message = failure.message[:SHRUNK_MESSAGE_CHARS]
    smaller = failure.model_copy(update={"payload": "", "metadata": {}, "message": message})
    return Outcome(
        outcome.topic,
        encode(smaller),
        key=outcome.key,
        headers=outcome.headers,
        dead_letter=True,
        code=outcome.code,
    )
