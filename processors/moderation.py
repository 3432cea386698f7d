"""The moderation processor: a completion in, a verdict out, and the completion routed.

Each completion from the completions topic is checked with the provider's moderation
endpoint (OpenAI's ``/v1/moderations`` shape) or, when configured, by a classification
template through the chat model (:mod:`processors.classifier`). The
:class:`~schemas.Verdict` goes to the moderation topic and the completion itself,
unchanged, to the approved or the flagged topic. It runs on the shared worker runtime, so
commits are ordered and a completion that cannot be checked becomes a dead letter on the
failures topic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import ValidationError

from processors.classifier import Classifier
from processors.fleet import FleetState
from processors.fleet.ticket import Ticket
from processors.model import ModelCallError, ModelClient
from processors.model_user import ModelUser
from processors.runtime import InRecord, Outcome
from processors.runtime.deadletters import About, DeadLetters, completion_of
from schemas import (
    Completion,
    ErrorCode,
    PromptmillError,
    Stage,
    Verdict,
    encode,
)
from schemas.validation import describe_validation_error
from topics import TopicCatalog, TopicKind
from topics.metrics import Registry

# the limits of the provider's moderation endpoint when no PROMPTMILL_MODERATION_MODEL names it
MODERATION_LIMITS = "moderation"


class ModerationProcessor(ModelUser):
    """Handles records of the completions topic."""

    name = "moderation"

    def __init__(
        self,
        catalog: TopicCatalog,
        model: ModelClient,
        moderation_model: str | None,
        registry: Registry,
        fleet: FleetState,
        classifier: Classifier | None = None,
    ) -> None:
        self._verdicts = catalog.name(TopicKind.MODERATION)
        self._approved = catalog.name(TopicKind.APPROVED)
        self._flagged = catalog.name(TopicKind.FLAGGED)
        self._dead = DeadLetters(catalog.name(TopicKind.FAILURES), Stage.MODERATION)
        super().__init__(model, fleet)
        self._moderation_model = moderation_model
        self._classifier = classifier
        self._counts = registry.counter(
            "promptmill_verdicts_total", "Completions checked, by verdict.", ("flagged",)
        )

    async def handle(self, record: InRecord) -> Sequence[Outcome]:
        try:
            completion = Completion.model_validate_json(record.value or b"")
        except ValidationError as exc:
            code, message = describe_validation_error(exc)
            return [self._failure(record, None, code, message)]
        try:
            verdict = await self._verdict(completion, len(record.value or b""))
        except ModelCallError as exc:
            return [self._failure(record, completion, exc.code, exc.message, exc.attempts)]
        except PromptmillError as exc:
            return [self._failure(record, completion, exc.code, exc.message)]
        self._counts.inc(flagged=str(verdict.flagged).lower())
        key, headers = completion.job_id.encode(), list(record.headers)
        route = self._flagged if verdict.flagged else self._approved
        return [
            Outcome(self._verdicts, encode(verdict), key=key, headers=headers),
            Outcome(route, record.value or b"", key=key, headers=headers),
        ]

    async def _verdict(self, completion: Completion, size: int) -> Verdict:
        common = {
            "job_id": completion.job_id,
            "batch_id": completion.batch_id,
            "tenant": completion.tenant,
            "custom_id": completion.custom_id,
        }
        if self._classifier is not None:
            found = await self._classifier.classify(completion, size)
            return Verdict(
                **common,
                flagged=found.flagged,
                categories=found.categories,
                scores=found.scores,
                model=found.model,
                classifier=found.classifier,
                attempts=found.attempts,
            )
        model = (
            self._moderation_model or MODERATION_LIMITS
        )  # its limits, from PROMPTMILL_MODEL_LIMITS
        tokens = math.ceil(len(completion.text) / 4) + 4
        ticket = Ticket(self._fleet, model, completion.tenant, tokens, None)
        body, attempts = await self._model.moderate(self._moderation_model, completion.text, ticket)
        result = body["results"][0]
        return Verdict(
            **common,
            flagged=bool(result.get("flagged")),
            categories={k: bool(v) for k, v in (result.get("categories") or {}).items()},
            scores={k: float(v) for k, v in (result.get("category_scores") or {}).items()},
            model=str(body.get("model") or self._moderation_model or ""),
            attempts=attempts,
        )

    def dead_letter(self, record: InRecord, error: BaseException) -> Outcome:
        return self._dead.of_error(record, error, About.of(completion_of(record)))

    def _failure(
        self,
        record: InRecord,
        completion: Completion | None,
        code: ErrorCode,
        message: str,
        attempts: int = 0,
    ) -> Outcome:
        about = About.of(completion)
        return self._dead.outcome(record, code, f"moderation: {message}", about, attempts=attempts)
