"""Error codes and the one root exception.

Every failure that ends a job carries an :class:`ErrorCode` from this closed enum in its
dead-letter record, so downstream consumers can count and route failures without parsing
messages. Exceptions raised inside promptmill derive from :class:`PromptmillError`, carry
their code, and say whether trying again could help (``retriable``).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, closed set of reasons a job can fail. Never rename a member."""

    INVALID_JSON = "invalid_json"
    SCHEMA_ERROR = "schema_error"
    UNKNOWN_TEMPLATE = "unknown_template"
    MISSING_VARIABLE = "missing_variable"
    RENDER_ERROR = "render_error"
    PROMPT_TOO_LONG = "prompt_too_long"
    MODEL_ERROR = "model_error"
    MODEL_TIMEOUT = "model_timeout"
    RATE_LIMIT_EXHAUSTED = "rate_limit_exhausted"
    CONTENT_FILTER = "content_filter"
    PAYLOAD_TOO_LARGE = "payload_too_large"  # the job record itself is over the job size limit
    OUTPUT_TOO_LARGE = "output_too_large"  # its result would not fit the topic it goes to
    CANCELLED = "cancelled"  # its batch was cancelled before the job ran
    BUDGET_EXCEEDED = "budget_exceeded"  # its tenant's or key's spending budget is used up
    INTERNAL_ERROR = "internal_error"


class PromptmillError(Exception):
    """Root of every promptmill exception.

    ``code`` ends up in the dead-letter record; ``retriable`` tells callers whether the
    same work could succeed if tried again later.
    """

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    retriable: bool = False

    def __init__(
        self, message: str, *, code: ErrorCode | None = None, retriable: bool | None = None
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if retriable is not None:
            self.retriable = retriable

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code.value
