"""Which templates may render inline: those whose cost is linear in their input.

Most prompt templates only substitute variables (``Summarize {{ text }} in {{ lang }}``).
Rendering them costs about as much as decoding the job, so sending them to a child
process would only add a round trip. A template qualifies when its syntax tree holds
nothing but text, variables, item/attribute lookups, conditionals, comparisons,
concatenation and a whitelist of filters whose output is at most a small multiple of
their input -- no loops, calls, macros, arithmetic or ``set``. Its output is then at most
``literal + refs * input * factor`` characters (:meth:`Shape.bound`), and the renderer
inlines it only while that bound is under the output cap; everything else goes to the
bounded child processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

# Filters whose output is at most a constant multiple of their input plus constant arguments.
LINEAR_FILTERS = frozenset(
    {
        "abs",
        "capitalize",
        "count",
        "d",
        "default",
        "dictsort",
        "e",
        "escape",
        "first",
        "float",
        "int",
        "items",
        "join",
        "last",
        "length",
        "list",
        "lower",
        "reverse",
        "round",
        "safe",
        "sort",
        "string",
        "title",
        "tojson",
        "trim",
        "truncate",
        "unique",
        "upper",
    }
)
LINEAR_TESTS = frozenset(
    {"boolean", "defined", "false", "mapping", "none", "number", "sequence", "string", "true"}
    | {"undefined", "eq", "ne", "lt", "le", "gt", "ge", "==", "!=", "in"}
)
ESCAPE_FACTOR = 6  # the most characters one input character becomes (tojson's \\u0000)
_PLAIN = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Const,
    nodes.Name,
    nodes.Getattr,
    nodes.If,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Concat,
    nodes.List,
    nodes.Tuple,
    nodes.Keyword,
)


@dataclass(frozen=True)
class Shape:
    """The size of a linear template's output, in terms of its input."""

    literal: int  # characters of text and constants
    refs: int  # variable references, each of which may emit (a multiple of) the input
    longest_constant: int

    def bound(self, input_size: int) -> int:
        """The most characters the template can produce from ``input_size`` of input."""
        factor = ESCAPE_FACTOR + self.longest_constant
        return self.literal + self.refs * input_size * factor


def linear_shape(env: SandboxedEnvironment, sources: Sequence[str]) -> Shape | None:
    """The :class:`Shape` of the template, or ``None`` if it is not linear (or does not
    parse: the bounded path reports the syntax error)."""
    literal = refs = longest = 0
    try:
        trees = [env.parse(source) for source in sources]
    except Exception:
        return None
    for tree in trees:
        for node in _walk(tree):
            if isinstance(node, nodes.Filter):
                if node.name not in LINEAR_FILTERS or not _constant_args(node):
                    return None
            elif isinstance(node, nodes.Test):
                if node.name not in LINEAR_TESTS or not _constant_args(node):
                    return None
            elif isinstance(node, nodes.Getitem):
                if not isinstance(node.arg, nodes.Const):
                    return None
            elif not isinstance(node, _PLAIN):
                return None
            if isinstance(node, nodes.Name):
                refs += 1
            elif isinstance(node, nodes.TemplateData):
                literal += len(node.data)
            elif isinstance(node, nodes.Const):
                size = len(str(node.value))
                literal += size
                longest = max(longest, size)
    return Shape(literal, refs, longest)


def _constant_args(node: nodes.Filter | nodes.Test) -> bool:
    if node.dyn_args is not None or node.dyn_kwargs is not None:
        return False
    values = [*node.args, *(kw.value for kw in node.kwargs)]
    return all(isinstance(v, nodes.Const) for v in values)


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)
