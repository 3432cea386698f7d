"""A render child: renders templates for its parent over stdin/stdout, under a memory limit.

Run by :class:`processors.templates.pool.RenderPool` as
``python -m processors.templates.child MEMORY_MB MAX_OUTPUT``. It limits its own address
space first (``RLIMIT_AS``), so a template that tries to build gigabytes gets a
``MemoryError`` here instead of taking the worker's memory; the parent kills it when a
render passes its deadline. Frames are a 4-byte big-endian length and a payload:
requests are pickles from the parent (trusted), replies are JSON (the parent never
unpickles what template code could have influenced).

Request: ``(key, sources or None, variables)``. Reply: ``{"ok": [text, ...]}``,
``{"need": true}`` (send the sources: this child has not compiled ``key``), or
``{"error": kind, "message": ...}`` with kind ``undefined``, ``security``, ``too_large``,
``syntax``, ``memory`` or ``error``. After a ``MemoryError`` the child replies and exits.
"""

from __future__ import annotations

import pickle
import resource
import struct
import sys
from collections import OrderedDict
from typing import Any, BinaryIO

import orjson
from jinja2 import Template as JinjaTemplate
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from processors.templates.sandbox import (
    BoundedSandbox,
    OutputTooLarge,
    compile_sources,
    render_all,
)

HEADER = struct.Struct(">I")
COMPILED_CACHE = 256


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    return stream.read(size)


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def handle(
    env: BoundedSandbox,
    cache: OrderedDict[str, list[JinjaTemplate]],
    key: str,
    sources: list[str] | None,
    variables: dict[str, Any],
) -> dict[str, Any]:
    compiled = cache.get(key)
    if compiled is None:
        if sources is None:
            return {"need": True}
        try:
            compiled = compile_sources(env, sources)
        except TemplateSyntaxError as exc:
            return {"error": "syntax", "message": f"line {exc.lineno}: {exc.message}"}
        cache[key] = compiled
        if len(cache) > COMPILED_CACHE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    try:
        return {"ok": render_all(env, compiled, variables)}
    except UndefinedError as exc:
        return {"error": "undefined", "message": str(exc.message)}
    except OutputTooLarge as exc:
        return {"error": "too_large", "message": str(exc)}
    except SecurityError as exc:
        return {"error": "security", "message": str(exc)}
    except RecursionError:
        return {"error": "error", "message": "recursion too deep"}
    except MemoryError:
        raise
    except Exception as exc:  # any error inside template code fails this render only
        return {"error": "error", "message": f"{type(exc).__name__}: {exc}"[:500]}


def main(argv: list[str]) -> None:
    memory = int(argv[0]) * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    env = BoundedSandbox(int(argv[1]))
    cache: OrderedDict[str, list[JinjaTemplate]] = OrderedDict()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while (frame := read_frame(stdin)) is not None:
        key, sources, variables = pickle.loads(frame)
        try:
            reply = handle(env, cache, key, sources, variables)
        except MemoryError:
            cache.clear()
            write_frame(stdout, b'{"error":"memory","message":"the render ran out of memory"}')
            sys.exit(3)  # a fresh child is safer than one that hit its limit
        try:
            payload = orjson.dumps(reply)
        except TypeError as exc:  # e.g. a lone surrogate from the variables
            payload = orjson.dumps({"error": "error", "message": f"output is not text: {exc}"})
        write_frame(stdout, payload)


if __name__ == "__main__":
    main(sys.argv[1:])
