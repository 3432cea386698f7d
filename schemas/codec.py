"""The one JSON codec every wire record goes through (orjson + pydantic v2)."""

from __future__ import annotations

import math
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

# Levels of objects and arrays a free-form value (a job's variables, metadata) may nest.
# Well inside what every decoder reads back: pydantic's refuses a document nested deeper
# than 200, and a record wraps the value in a level or two of its own.
MAX_NESTING = 64
# Integers fit in 64 bits: what every reader of promptmill's records takes (orjson in its own
# processors, and most JSON libraries in other languages, read a larger one as a lossy
# float or refuse it). Signed, or unsigned for the top half.
INT_MIN, INT_MAX = -(2**63), 2**64 - 1


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


def json_problem(value: object, max_nesting: int = MAX_NESTING) -> str | None:
    """Why ``value`` is not plain JSON that the codec carries unchanged, or ``None``.

    Plain JSON is objects with string keys, arrays, strings (no lone surrogates), 64-bit
    integers, finite floats, booleans and null, nested at most ``max_nesting`` levels
    (``value`` itself is the first). Anything else would fail to encode (a surrogate, a
    cycle), encode as something else (``inf`` as ``null``), or not decode again elsewhere
    (nesting, a 400-digit integer).
    """
    stack: list[tuple[dict[Any, Any] | list[Any], int]] = [([value], 0)]
    checked: dict[int, int] = {}  # container id -> the level it was checked at
    while stack:
        container, level = stack.pop()
        if level > max_nesting:
            return f"nested deeper than {max_nesting} levels"
        if checked.get(id(container), -1) >= level:
            continue  # shared (built in Python, never decoded): checked already
        checked[id(container)] = level
        if isinstance(container, dict) and not all(
            type(key) is str and not _has_surrogate(key) for key in container
        ):
            return "an object key is not a string, or holds a lone surrogate"
        for child in container.values() if isinstance(container, dict) else container:
            if isinstance(child, str):
                if _has_surrogate(child):
                    return "a string holds a lone surrogate, which JSON cannot carry"
            elif isinstance(child, dict | list):
                stack.append((child, level + 1))
            elif isinstance(child, float):
                if not math.isfinite(child):
                    return f"a number is {child}, which JSON cannot carry"
            elif isinstance(child, int):  # bool is an int
                if not INT_MIN <= child <= INT_MAX:
                    return "an integer does not fit in 64 bits"
            elif child is not None:
                return f"a {type(child).__name__} is not a JSON value"
    return None


def refuse_lone_surrogates(value: Any) -> Any:
    """A field validator for every field of a wire model: a string (or list of strings)
    holding a lone surrogate is refused. Python strings can hold one, JSON cannot, so the
    record could be built but never encoded."""
    for text in value if isinstance(value, list) else (value,):
        if isinstance(text, str) and _has_surrogate(text):
            raise ValueError("a string holds a lone surrogate, which JSON cannot carry")
    return value


def _has_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False
