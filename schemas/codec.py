"""The one JSON codec every wire record goes through (orjson + pydantic v2)."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def encode(record: BaseModel) -> bytes:
    """Serialise a wire record to compact JSON bytes; unset (``None``) fields are left out."""
    return record.__pydantic_serializer__.to_json(record, exclude_none=True)


def decode(data: bytes | str, model: type[M]) -> M:
    """Parse JSON bytes into ``model``; raises ``pydantic.ValidationError`` on bad input.

    Invalid JSON also raises ``ValidationError`` (type ``json_invalid``), so callers
    tell the two apart with :func:`is_json_error`.
    """
    return model.model_validate_json(data)


def loads(data: bytes | str) -> object:
    """Parse any JSON document (raises ``orjson.JSONDecodeError``)."""
    return orjson.loads(data)


def dumps(value: object) -> bytes:
    """Serialise plain data to compact JSON bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
