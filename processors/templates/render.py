"""Rendering: a template version plus variables becomes chat messages, in bounded time.

Jinja2 runs in a sandbox with ``StrictUndefined`` (:mod:`processors.templates.sandbox`), so
a variable the job did not supply is an error with its name, never an empty string in the
prompt. Where it runs depends on what the template can cost: one whose output is provably
a small multiple of its input (:mod:`processors.templates.linear`) renders inline when
that bound is under the output cap; every other render goes to the pool of child
processes with a deadline and a memory limit (:mod:`processors.templates.pool`). Either
way the event loop is never held for long and every failure is a ``missing_variable`` or
``render_error`` for that job alone. Compiled templates are cached by content hash, so a
version number can never render stale text.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from jinja2 import Template as JinjaTemplate
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError

from processors.templates.linear import Shape, linear_shape
from processors.templates.pool import RenderFailed, RenderPool
from processors.templates.sandbox import (
    BoundedSandbox,
    OutputTooLarge,
    compile_sources,
    render_all,
)
from schemas import ChatMessage, ErrorCode, PromptmillError, Template

PLAN_CACHE = 1024


class MissingVariable(PromptmillError):
    code = ErrorCode.MISSING_VARIABLE


class RenderError(PromptmillError):
    code = ErrorCode.RENDER_ERROR


@dataclass(frozen=True)
class _Plan:
    sources: list[str]
    shape: Shape | None  # None: not linear, always rendered in the pool
    compiled: list[JinjaTemplate] | None  # for inline renders


class Renderer:
    """Renders template versions; safe to share across concurrent jobs. Owns its pool."""

    def __init__(self, pool: RenderPool) -> None:
        self._pool = pool
        self._env = BoundedSandbox(pool.config.max_output)
        self._plans: OrderedDict[str, _Plan] = OrderedDict()
        self.inline = 0  # renders done on the event loop (linear templates)
        self.pooled = 0  # renders done in a child process

    async def __aenter__(self) -> Renderer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._pool.start()

    async def stop(self) -> None:
        await self._pool.stop()

    async def render(
        self, template: Template, variables: dict[str, Any], input_size: int
    ) -> list[ChatMessage]:
        """The template's messages with ``variables`` filled in. ``input_size`` bounds the
        size of the variables (the job record's size will do)."""
        ref = f"{template.name}@{template.version}"
        missing = [v for v in template.variables if v not in variables]
        if missing:
            raise MissingVariable(f"missing variable(s) {', '.join(missing)} for template {ref}")
        plan = self._plan(template)
        try:
            if (
                plan.shape is not None
                and plan.compiled is not None
                and (plan.shape.bound(input_size) <= self._pool.config.max_output)
            ):
                self.inline += 1
                texts = self._render_inline(plan.compiled, variables)
            else:
                self.pooled += 1
                texts = await self._pool.render(template.content_hash, plan.sources, variables)
        except RenderFailed as exc:
            if exc.kind == "undefined":
                raise MissingVariable(f"template {ref}: {exc.message}") from None
            raise RenderError(f"template {ref}: {_explain(exc.kind)}{exc.message}") from None
        return [
            ChatMessage(role=m.role, content=text, name=m.name)
            for m, text in zip(template.messages, texts, strict=True)
        ]

    def _render_inline(self, compiled: list[JinjaTemplate], variables: dict[str, Any]) -> list[str]:
        try:
            return render_all(self._env, compiled, variables)
        except UndefinedError as exc:
            raise RenderFailed("undefined", str(exc.message)) from None
        except OutputTooLarge as exc:
            raise RenderFailed("too_large", str(exc)) from None
        except SecurityError as exc:
            raise RenderFailed("security", str(exc)) from None
        except Exception as exc:  # any error inside template code fails this job only
            raise RenderFailed("error", f"{type(exc).__name__}: {exc}"[:500]) from None

    def _plan(self, template: Template) -> _Plan:
        key = template.content_hash
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        sources = [m.content for m in template.messages]
        shape = linear_shape(self._env, sources)
        compiled = None
        if shape is not None:
            try:
                compiled = compile_sources(self._env, sources)
            except TemplateSyntaxError:
                shape = None  # the pool reports it, with its line
        plan = self._plans[key] = _Plan(sources, shape, compiled)
        if len(self._plans) > PLAN_CACHE:
            self._plans.popitem(last=False)
        return plan


def _explain(kind: str) -> str:
    return {"security": "unsafe operation: ", "syntax": "syntax error: "}.get(kind, "")
