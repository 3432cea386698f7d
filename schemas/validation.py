"""One-line descriptions of validation errors, with the field that is wrong."""

from __future__ import annotations

from pydantic import ValidationError

from schemas.errors import ErrorCode


def describe_validation_error(exc: ValidationError) -> tuple[ErrorCode, str]:
    """The error code (invalid JSON vs. schema) and a one-line message naming the field."""
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        detail = str(first.get("ctx", {}).get("error", first["msg"]))
        return ErrorCode.INVALID_JSON, f"invalid JSON: {detail}"
    field = ".".join(str(p) for p in first["loc"]) or "(record)"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    return ErrorCode.SCHEMA_ERROR, f"field {field}: {message}{more}"
