"""Moderation by a classification template through the chat model.

Instead of the provider's moderation endpoint, the moderation processor can render a
versioned template (``PROMPTMILL_MODERATION_TEMPLATE``, e.g. ``moderate@production``)
with the completion's fields and ask the chat model for a verdict. The answer may be a
JSON object (``{"flagged": true, "categories": {"violence": true}, "scores": {...}}``,
categories also as a list) or start with one word: ``flagged``/``unsafe``/``yes`` or
``safe``/``approved``/``no``. Anything else is not a verdict: the completion becomes a
dead letter (``model_error``) rather than being guessed approved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from processors.fleet import FleetState
from processors.fleet.ticket import Ticket, estimate_tokens
from processors.model import ModelClient
from processors.templates.render import Renderer
from schemas import Completion, ErrorCode, PromptmillError
from topics.templates import TemplateStore

FLAGGED_WORDS = frozenset({"flagged", "unsafe", "yes", "flag", "harmful"})
SAFE_WORDS = frozenset({"safe", "approved", "no", "ok", "clean", "harmless"})
_FIRST_WORD = re.compile(r"[A-Za-z]+")


class UnreadableVerdict(PromptmillError):
    """The classifier's answer is neither a JSON verdict nor a verdict word."""

    code = ErrorCode.MODEL_ERROR


@dataclass(frozen=True)
class Classification:
    flagged: bool
    categories: dict[str, bool]
    scores: dict[str, float]
    model: str
    classifier: str  # name@version of the template
    attempts: int


def parse_verdict(text: str) -> tuple[bool, dict[str, bool], dict[str, float]]:
    """(flagged, categories, scores) from a classifier's answer; raises UnreadableVerdict."""
    answer = text
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            data = orjson.loads(text[start : end + 1])
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("flagged"), bool):
            return data["flagged"], _categories(data.get("categories")), _scores(data)
        if data is not None:  # JSON, but no verdict in it: read the words around it
            text = text[:start] + " " + text[end + 1 :]
    word = _FIRST_WORD.search(text)
    if word and word.group().lower() in FLAGGED_WORDS:
        return True, {}, {}
    if word and word.group().lower() in SAFE_WORDS:
        return False, {}, {}
    raise UnreadableVerdict(f"classifier answer is not a verdict: {answer[:80]!r}")


def _categories(value: Any) -> dict[str, bool]:
    if isinstance(value, dict):
        return {str(k): bool(v) for k, v in value.items()}
    if isinstance(value, list):
        return {str(name): True for name in value}
    return {}


def _scores(data: dict[str, Any]) -> dict[str, float]:
    scores = data.get("scores") or data.get("category_scores") or {}
    if not isinstance(scores, dict):
        return {}
    return {str(k): float(v) for k, v in scores.items() if isinstance(v, int | float)}


class Classifier:
    """Renders the classification template for a completion and reads the model's verdict."""

    def __init__(
        self,
        store: TemplateStore,
        renderer: Renderer,
        ref: str,
        model: ModelClient,
        default_model: str,
        fleet: FleetState,
    ) -> None:
        self._store = store
        self._renderer = renderer
        self._ref = ref
        self._model = model
        self._default_model = default_model
        self._fleet = fleet

    async def classify(self, completion: Completion, size: int) -> Classification:
        """The verdict on ``completion`` (``size``: its record's size, which bounds the
        template's variables)."""
        template = self._store.resolve(self._ref)
        variables = {
            "text": completion.text,
            "tenant": completion.tenant,
            "template": completion.template,
            "model": completion.model,
            "custom_id": completion.custom_id,
            "metadata": completion.metadata,
        }
        messages = await self._renderer.render(template, variables, size)
        model = template.model or self._default_model
        params = template.params
        tokens = estimate_tokens(messages) + (
            params.max_tokens or params.max_completion_tokens or 0
        )
        # the classifier spends the same model limits as the jobs it judges
        ticket = Ticket(self._fleet, model, completion.tenant, tokens, None)
        reply = await self._model.complete(model, messages, params.as_request(), ticket)
        flagged, categories, scores = parse_verdict(reply.text)
        return Classification(
            flagged,
            categories,
            scores,
            reply.model or model,
            f"{template.name}@{template.version}",
            reply.attempts,
        )
