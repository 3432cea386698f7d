"""The model client: chat completions through the official ``openai`` SDK.

The SDK runs on its aiohttp transport (``DefaultAioHttpClient``) against any
OpenAI-compatible base URL. The SDK's own retries are off: this client retries itself so
that it can count attempts, honour ``Retry-After`` on 429 and 5xx, back off with jitter,
and turn the last error into a stable :class:`~schemas.ErrorCode`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import openai
import orjson

from processors.fleet.credentials import CredentialGuard
from processors.fleet.state import ProviderFeedback
from processors.retry import Backoff, parse_duration, retry_after_seconds
from schemas import ChatMessage, ErrorCode, PromptmillError, Usage

log = logging.getLogger(__name__)


class ModelCallError(PromptmillError):
    """A model call that failed for good; ``code`` says how."""

    def __init__(self, message: str, *, code: ErrorCode, retriable: bool, attempts: int) -> None:
        super().__init__(message, code=code, retriable=retriable)
        self.attempts = attempts


class CredentialsRejected(ModelCallError):
    """A deployment refused its key (401/403), or is paused since it did: the call goes to
    another deployment; the deployment's breaker does not count it (the key is at fault,
    and the credential guard already pauses it)."""


@dataclass(frozen=True)
class ModelReply:
    text: str
    finish_reason: str | None
    usage: Usage
    model: str
    response_id: str | None
    attempts: int
    latency_ms: float
    feedback: ProviderFeedback | None = None
    deployment: str | None = None  # the catalog deployment that answered (routed calls)
    fallbacks: tuple[str, ...] = ()  # the deployments tried before it, in order
    cost_usd: float | None = None  # at the deployment's prices, when the catalog has them


class Gate(Protocol):
    """Admission to the provider: the fleet's rate limits (:class:`processors.fleet.Ticket`)."""

    async def admit(self, attempt: int) -> None: ...

    async def rate_limited(self, retry_after: float | None) -> None: ...


class ModelClient:
    """Calls ``/v1/chat/completions`` with bounded, classified retries."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        max_attempts: int = 6,
        backoff: Backoff | None = None,
        rate_limit_max_wait: float = 600.0,
        guard: CredentialGuard | None = None,
        make_client: Callable[[], openai.AsyncOpenAI] | None = None,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff = backoff or Backoff()
        self._rate_limit_max_wait = rate_limit_max_wait
        self._guard = guard  # without one, a rejected key is a model_error like any 4xx
        self._make_client = make_client  # e.g. the SDK's Azure client for a catalog deployment
        self._client: openai.AsyncOpenAI | None = None

    @property
    def looks_paused(self) -> bool:
        """Whether its endpoint's credentials were rejected lately (see the guard)."""
        return self._guard is not None and self._guard.looks_paused()

    async def start(self) -> None:
        if self._client is None and self._make_client is not None:
            self._client = self._make_client()
        if self._client is None:
            self._client = openai.AsyncOpenAI(
                base_url=self._base_url,
                api_key=self._api_key,
                max_retries=0,
                timeout=self._timeout,
                http_client=openai.DefaultAioHttpClient(timeout=self._timeout),
            )

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def complete(
        self,
        model: str,
        messages: list[ChatMessage],
        params: dict[str, Any],
        gate: Gate | None = None,
        max_attempts: int | None = None,
    ) -> ModelReply:
        """One chat completion, retried per policy; raises :class:`ModelCallError`.

        ``gate`` (the fleet's rate limits) is asked before every attempt and told of every
        429; without one, 429s are waited out here. ``max_attempts`` overrides the client's
        (fewer where another deployment can take the call).
        """
        wire: Any = [m.model_dump(exclude_none=True) for m in messages]
        started = time.monotonic()

        async def send(client: openai.AsyncOpenAI) -> Any:
            # The request body goes in extra_body and the answer is parsed with orjson:
            # the SDK's TypedDict transform of ``messages`` and its pydantic parsing of
            # the answer were 45% of a call's CPU (profiled), and both only repeat what
            # our own schemas already checked. Transport, auth and errors stay the SDK's.
            return await client.chat.completions.with_raw_response.create(
                model=model, messages=[], extra_body={"messages": wire, **params}
            )

        raw, body, attempt = await self._with_retries(send, gate, max_attempts)
        return _reply(body, attempt, started, feedback_from(raw.headers))

    async def moderate(
        self, model: str | None, text: str, gate: Gate | None = None
    ) -> tuple[dict[str, Any], int]:
        """The provider's ``/v1/moderations`` answer for ``text``, and the attempts made."""

        async def send(client: openai.AsyncOpenAI) -> Any:
            extra = {"model": model} if model else {}
            return await client.moderations.with_raw_response.create(input=text, extra_body=extra)

        _, body, attempt = await self._with_retries(send, gate)
        if not isinstance(body, dict) or not body.get("results"):
            raise ModelCallError(
                "moderation answer without results",
                code=ErrorCode.MODEL_ERROR,
                retriable=False,
                attempts=attempt,
            )
        return body, attempt

    async def embed(
        self, model: str, inputs: list[str], gate: Gate | None = None
    ) -> tuple[list[list[float]], int]:
        """The provider's ``/v1/embeddings`` vectors of ``inputs`` (in order), and the
        attempts made."""

        async def send(client: openai.AsyncOpenAI) -> Any:
            return await client.embeddings.with_raw_response.create(model=model, input=inputs)

        _, body, attempt = await self._with_retries(send, gate)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or len(data) != len(inputs):
            raise ModelCallError(
                "embeddings answer without one vector per input",
                code=ErrorCode.MODEL_ERROR,
                retriable=False,
                attempts=attempt,
            )
        vectors = [d.get("embedding") if isinstance(d, dict) else None for d in data]
        if not all(
            isinstance(v, list) and v and all(isinstance(x, int | float) for x in v)
            for v in vectors
        ):
            # e.g. llama.cpp's server without pooling answers a vector per token
            raise ModelCallError(
                "embeddings answer is not one vector of numbers per input",
                code=ErrorCode.MODEL_ERROR,
                retriable=False,
                attempts=attempt,
            )
        order = sorted(range(len(data)), key=lambda i: int(data[i].get("index", i)))
        return [[float(x) for x in vectors[i]] for i in order], attempt  # type: ignore[union-attr]

    async def _with_retries(
        self,
        send: Callable[[openai.AsyncOpenAI], Awaitable[Any]],
        gate: Gate | None,
        max_attempts: int | None = None,
    ) -> tuple[Any, Any, int]:
        """(raw response, decoded JSON body, attempts): 429s are retried until
        ``rate_limit_max_wait`` seconds have passed since the first; other retriable
        errors until ``max_attempts`` attempts."""
        if self._client is None:
            raise RuntimeError("ModelClient called before start()")
        attempt = failures = 0
        limited_since: float | None = None
        while True:
            attempt += 1
            if self._guard is not None and max_attempts is not None:  # another can take it
                if not await self._guard.try_turn():
                    raise CredentialsRejected(
                        "its credentials are rejected: paused until a probe is accepted",
                        code=ErrorCode.MODEL_ERROR,
                        retriable=True,
                        attempts=attempt - 1,
                    )
            elif self._guard is not None:
                await self._guard.wait_turn()  # the endpoint's credentials may be rejected
            if gate is not None:
                await gate.admit(attempt)
            try:
                raw = await send(self._client)
                body = orjson.loads(raw.http_response.content)
            except openai.APIStatusError as exc:
                if exc.status_code in (401, 403) and self._guard is not None:
                    await self._guard.rejected(exc.status_code, _error_message(exc))
                    if max_attempts is not None:  # another deployment can take the call
                        raise CredentialsRejected(
                            f"HTTP {exc.status_code}: {_error_message(exc)} (credentials "
                            "rejected: paused)",
                            code=ErrorCode.MODEL_ERROR,
                            retriable=True,
                            attempts=attempt,
                        ) from exc
                    continue  # the job waits for the key to work again; it does not fail
                code, retriable = _classify_status(exc)
                wait = retry_after_seconds(exc.response.headers) if retriable else None
                error = f"HTTP {exc.status_code}: {_error_message(exc)}"
            except openai.APITimeoutError as exc:
                code, retriable, wait = timeout_or_unreachable(exc), True, None
                error = "timed out" if code is ErrorCode.MODEL_TIMEOUT else f"cannot connect: {exc}"
            except (
                openai.APIConnectionError,
                openai.APIResponseValidationError,
                ValueError,
            ) as exc:
                code, retriable, wait = ErrorCode.MODEL_ERROR, True, None
                error = f"{type(exc).__name__}: {exc}"
            else:
                if self._guard is not None:
                    await self._guard.accepted()
                return raw, body, attempt
            if code is ErrorCode.RATE_LIMIT_EXHAUSTED:
                now = time.monotonic()
                limited_since = limited_since if limited_since is not None else now
                if now - limited_since >= self._rate_limit_max_wait:
                    raise ModelCallError(
                        f"{error} (still rate limited after {now - limited_since:.0f} s, "
                        f"{attempt} attempt(s))",
                        code=code,
                        retriable=True,
                        attempts=attempt,
                    )
                if gate is not None:
                    await gate.rate_limited(wait)  # the next admit waits, fleet-wide
                else:
                    await asyncio.sleep(self._backoff.delay(attempt, wait))
                continue
            failures += 1
            if not retriable or failures >= (max_attempts or self._max_attempts):
                raise ModelCallError(
                    f"{error} (after {attempt} attempt(s))",
                    code=code,
                    retriable=retriable,
                    attempts=attempt,
                )
            delay = self._backoff.delay(failures, wait)
            log.debug("model attempt %d failed (%s); retrying in %.2fs", attempt, error, delay)
            await asyncio.sleep(delay)


def feedback_from(headers: Mapping[str, str]) -> ProviderFeedback | None:
    """The provider's ``x-ratelimit-*`` headers, if it sent any."""
    if "x-ratelimit-remaining-requests" not in headers and (
        "x-ratelimit-remaining-tokens" not in headers
    ):
        return None

    def number(name: str) -> int | None:
        value = headers.get(name)
        return int(value) if value is not None and value.isdigit() else None

    return ProviderFeedback(
        remaining_requests=number("x-ratelimit-remaining-requests"),
        reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
        remaining_tokens=number("x-ratelimit-remaining-tokens"),
        reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")),
        limit_requests=number("x-ratelimit-limit-requests"),
        limit_tokens=number("x-ratelimit-limit-tokens"),
    )


def _reply(
    reply: Any, attempt: int, started: float, feedback: ProviderFeedback | None
) -> ModelReply:
    """A :class:`ModelReply` from the decoded JSON of a chat completion."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise ModelCallError(
            "model answered without choices",
            code=ErrorCode.MODEL_ERROR,
            retriable=False,
            attempts=attempt,
        )
    choice = choices[0]
    finish_reason = choice.get("finish_reason")
    if finish_reason == "content_filter":
        raise ModelCallError(
            "the provider's content filter stopped the completion",
            code=ErrorCode.CONTENT_FILTER,
            retriable=False,
            attempts=attempt,
        )
    message = choice.get("message") or {}
    usage = reply.get("usage") or {}
    return ModelReply(
        text=str(message.get("content") or ""),
        finish_reason=finish_reason,
        usage=Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            total_tokens=int(usage.get("total_tokens") or 0),
        ),
        model=str(reply.get("model") or ""),
        response_id=reply.get("id"),
        attempts=attempt,
        latency_ms=(time.monotonic() - started) * 1000.0,
        feedback=feedback,
    )


def timeout_or_unreachable(exc: BaseException) -> ErrorCode:
    """The aiohttp transport reports a refused connection as a connect *timeout*; tell
    them apart by the cause chain, so an unreachable endpoint is a ``model_error``."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError | ConnectionError):
            return ErrorCode.MODEL_ERROR
        cause = cause.__cause__ or cause.__context__
    return ErrorCode.MODEL_TIMEOUT


def _classify_status(exc: openai.APIStatusError) -> tuple[ErrorCode, bool]:
    status = exc.status_code
    code = str(getattr(exc, "code", "") or "")
    if status == 429:
        return ErrorCode.RATE_LIMIT_EXHAUSTED, True
    if status in (408, 409) or status >= 500:
        return ErrorCode.MODEL_ERROR, True
    if code == "context_length_exceeded" or "maximum context length" in _error_message(exc):
        return ErrorCode.PROMPT_TOO_LONG, False
    if code == "content_filter" or code == "content_policy_violation":
        return ErrorCode.CONTENT_FILTER, False
    return ErrorCode.MODEL_ERROR, False


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(exc.message)[:300]
