"""One-line descriptions of validation errors, with the field that is wrong."""

from __future__ import annotations

from pydantic import ValidationError

from schemas.errors import ErrorCode

FIELD_CHARS = 200  # of a field's path in a message (a hostile key can be a megabyte)
DETAIL_CHARS = 500


def one_line(text: str, limit: int) -> str:
    """``text`` on one line of at most about ``limit`` characters: line breaks and other
    unprintable characters escaped (``\\n``), the rest cut off with an ellipsis."""
    text = text[: limit + 1]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "…"


def describe_validation_error(exc: ValidationError) -> tuple[ErrorCode, str]:
    """The error code (invalid JSON vs. schema) and a one-line message naming the field."""
    first = exc.errors(include_url=False, include_context=True, include_input=False)[0]
    if first["type"] == "json_invalid":
        detail = str(first.get("ctx", {}).get("error", first["msg"]))
        return ErrorCode.INVALID_JSON, f"invalid JSON: {one_line(detail, DETAIL_CHARS)}"
    field = one_line(".".join(str(p) for p in first["loc"]), FIELD_CHARS) or "(record)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    message = one_line(first["msg"].removeprefix("Value error, "), DETAIL_CHARS)
    return ErrorCode.SCHEMA_ERROR, f"field {field}: {message}{more}"
