"""Rendering: a template version plus variables becomes chat messages.

Jinja2 runs in a ``SandboxedEnvironment`` (no attribute access to internals, no
imports) with ``StrictUndefined``, so a variable the job did not supply is an error with
its name, never an empty string in the prompt. Compiled templates are cached per version.
"""

from __future__ import annotations

from typing import Any

from jinja2 import StrictUndefined, TemplateError, UndefinedError, meta
from jinja2 import Template as JinjaTemplate
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from schemas import ChatMessage, ErrorCode, PromptmillError, Template


class MissingVariable(PromptmillError):
    code = ErrorCode.MISSING_VARIABLE


class RenderError(PromptmillError):
    code = ErrorCode.RENDER_ERROR


class Renderer:
    """Renders template versions; safe to share across concurrent jobs."""

    def __init__(self, cache_size: int = 1024) -> None:
        self._env = SandboxedEnvironment(
            undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False
        )
        self._compiled: dict[tuple[str, int], list[JinjaTemplate]] = {}
        self._cache_size = cache_size

    def render(self, template: Template, variables: dict[str, Any]) -> list[ChatMessage]:
        """The template's messages with ``variables`` filled in."""
        ref = f"{template.name}@{template.version}"
        missing = [v for v in template.variables if v not in variables]
        if missing:
            raise MissingVariable(f"missing variable(s) {', '.join(missing)} for template {ref}")
        compiled = self._compile(template)
        messages = []
        for message, jinja in zip(template.messages, compiled, strict=True):
            try:
                content = jinja.render(variables)
            except UndefinedError as exc:
                raise MissingVariable(f"template {ref}: {exc.message}") from None
            except SecurityError as exc:
                raise RenderError(f"template {ref}: unsafe operation: {exc}") from None
            except Exception as exc:  # any error inside template code fails this job only
                raise RenderError(f"template {ref}: {type(exc).__name__}: {exc}") from None
            messages.append(ChatMessage(role=message.role, content=content, name=message.name))
        return messages

    def _compile(self, template: Template) -> list[JinjaTemplate]:
        key = (template.name, template.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            try:
                compiled = [self._env.from_string(m.content) for m in template.messages]
            except TemplateError as exc:
                raise RenderError(f"template {key[0]}@{key[1]}: {exc}") from None
            if len(self._compiled) >= self._cache_size:
                self._compiled.pop(next(iter(self._compiled)))
            self._compiled[key] = compiled
        return compiled

    def variables_used(self, source: str) -> set[str]:
        """Variables a template source refers to (raises ``TemplateError`` on bad syntax)."""
        return meta.find_undeclared_variables(self._env.parse(source))
