"""The Jinja2 sandbox templates render in, with caps on what one expression may build.

Templates are code written by any template author, and a job's variables are whatever a
producer sent: rendering must not escape (Jinja's :class:`SandboxedEnvironment`, jinja2 >=
3.1.6), must not leave a variable silently empty (``StrictUndefined``), and must not
build something huge. The caps here fail the obvious bombs fast and in-process:

- ``*`` on a string or sequence, and ``**``, may not build a result over ``max_output``
  characters (``'a' * 10**9`` fails at once instead of allocating a gigabyte);
- ``range`` yields at most :data:`MAX_RANGE` items;
- the rendered output of all messages together may not exceed ``max_output`` characters
  (counted while it is generated, so a long loop stops at the cap, not at the end).

What no cap can bound -- nested loops, formatting with a huge width, a filter chain that
grows -- is bounded by where the render runs: a child process with a CPU deadline and a
memory limit (:mod:`processors.templates.pool`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

from jinja2 import StrictUndefined
from jinja2 import Template as JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context, Undefined
from jinja2.sandbox import SandboxedEnvironment

MAX_RANGE = 10_000


class OutputTooLarge(SecurityError):
    """The render would produce more than the output cap."""


class BoundedSandbox(SandboxedEnvironment):
    """A sandboxed environment whose ``*``, ``**`` and ``range`` cannot build huge values."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, max_output: int) -> None:
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
        self.max_output = max_output
        self.globals["range"] = _bounded_range

    def unsafe_undefined(self, obj: Any, attribute: str) -> Undefined:
        """Fail at once on an unsafe attribute (Jinja returns an undefined that fails only
        when used, and a chained lookup on it then reads as a missing variable)."""
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )

    def call_binop(self, context: Context, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            _check_repeat(left, right, self.max_output)
            _check_repeat(right, left, self.max_output)
            return operator.mul(left, right)
        if operator_ == "**":
            _check_power(left, right, self.max_output)
            return operator.pow(left, right)
        return super().call_binop(context, operator_, left, right)


def _check_repeat(seq: Any, times: Any, cap: int) -> None:
    if (
        isinstance(seq, str | bytes | list | tuple)
        and isinstance(times, int)
        and len(seq) * times > cap
    ):
        raise OutputTooLarge(f"'*' would build {len(seq) * times:,} items (cap {cap:,})")


def _check_power(base: Any, exponent: Any, cap: int) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and abs(base) > 1 and exponent > 0:
        digits = exponent * math.log10(abs(base))
        if digits > cap:
            raise OutputTooLarge(f"'**' would build a number of {digits:,.0f} digits")


def _bounded_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise OutputTooLarge(f"range of {len(result):,} items (cap {MAX_RANGE:,})")
    return result


def compile_sources(env: BoundedSandbox, sources: Sequence[str]) -> list[JinjaTemplate]:
    """Compile each message's source (raises ``jinja2.TemplateSyntaxError``)."""
    return [env.from_string(source) for source in sources]


def render_all(
    env: BoundedSandbox, compiled: Sequence[JinjaTemplate], variables: dict[str, Any]
) -> list[str]:
    """Render every message, stopping as soon as the output cap is passed."""
    budget = env.max_output
    out = []
    for template in compiled:
        parts = []
        for chunk in template.generate(variables):
            budget -= len(chunk)
            if budget < 0:
                raise OutputTooLarge(f"the rendered prompt exceeds {env.max_output:,} characters")
            parts.append(chunk)
        out.append("".join(parts))
    return out
