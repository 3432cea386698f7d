"""An OpenAI-compatible model simulator, for tests and benchmarks.

A small aiohttp server that speaks the OpenAI wire format well enough for the
official ``openai`` SDK (chat completions, completions, moderations, models) but
never runs a model: completions are deterministic words derived from a sha256 of
the request (``sim_text``), so tests can assert on exact content and usage and a
benchmark measures promptmill rather than a GPU.

What a real provider does to a client is reproduced on purpose, to exercise the
retry, rate-limit and dead-letter paths: latency and generation speed; OpenAI's
RPM/TPM limits with 429s and ``x-ratelimit-*`` headers (``sim_limits``); random
500s, hangs and malformed bodies drawn from ``random.Random(seed)``; and the
same faults on demand via magic markers in the prompt (``[[sim:error=503]]``...).

``GET /sim/stats``, ``POST /sim/config`` (a partial ``SimConfig``, applied live)
and ``POST /sim/reset`` let a test look inside and steer. Run it with
``python -m promptmill.dev.simulator --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors.retry import parse_duration
from promptmill.dev.sim_limits import BucketShape, FaultDraws, RateLimiter
from promptmill.dev.sim_text import (
    MALFORMED_BODY,
    Generated,
    InvalidRequest,
    completion_body,
    context_length_message,
    embeddings_body,
    error_body,
    estimate_tokens,
    generate,
    moderation_body,
    parse_generation,
    parse_markers,
)

logger = logging.getLogger(__name__)


class SimConfig(BaseModel):
    """How the simulator behaves; every field can be changed live via ``POST /sim/config``."""

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(20.0, ge=0, description="Mean base latency per request.")
    jitter_ms: float = Field(5.0, ge=0, description="Uniform +/- jitter around latency_ms.")
    tokens_per_second: float = Field(0.0, ge=0, description="Generation speed; 0 = instant.")
    rpm_limit: int = Field(0, ge=0, description="Requests per minute; 0 = no limit.")
    tpm_limit: int = Field(0, ge=0, description="Tokens per minute; 0 = no limit.")
    bucket_start: Literal["full", "empty"] = Field(
        "full", description="Whether the limit buckets start full (OpenAI) or empty."
    )
    quantum_seconds: float = Field(
        0.0,
        ge=0,
        le=60,
        description="Enforce the per-minute limits per quantum of this many seconds "
        "(capacity limit * quantum / 60, refilled whole each quantum); 0 = continuously.",
    )
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered HTTP 500.")
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Share that hang hang_seconds.")
    hang_seconds: float = Field(120.0, ge=0, description="How long a 'timeout' request hangs.")
    malformed_rate: float = Field(0.0, ge=0, le=1, description="Share answered 200 non-JSON.")
    seed: int = Field(0, description="Seed of the random.Random used for fault draws.")
    models: list[str] = Field(default=["promptmill-sim"], description="Listed by /v1/models.")
    storm: bool = Field(
        False, description="While true, every generation request is answered 429 (a 429 storm)."
    )
    auth_status: Literal[0, 401, 403] = Field(
        0, description="While 401 or 403, every request is refused so (a revoked key)."
    )
    filter_words: list[str] = Field(
        default=[],
        description="This provider's content policy: a prompt with one of these words "
        "(any case) is answered with finish_reason content_filter.",
    )


@dataclass
class SimStats:
    """Counters served by ``GET /sim/stats``."""

    requests: int = 0
    chat_completions: int = 0
    completions: int = 0
    moderations: int = 0
    embeddings: int = 0
    rate_limited: int = 0
    rejected_auth: int = 0
    errors: int = 0
    timeouts: int = 0
    malformed: int = 0
    azure: int = 0  # chat completions that came by the Azure-shaped path
    # answered requests by endpoint and the model they named: {"chat:gpt-x": 3, ...}
    models: dict[str, int] = field(default_factory=dict)

    def answered(self, endpoint: str, model: object) -> None:
        key = f"{endpoint}:{model}"
        self.models[key] = self.models.get(key, 0) + 1


def error_response(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An OpenAI-style error: ``{"error": {"message", "type", "code", "param"}}``."""
    body = error_body(status, message, type_=type_, code=code, param=param)
    return web.json_response(body, status=status, headers=headers)


class Simulator:
    """The simulator's state (config, buckets, counters, random draws) and its handlers."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.stats = SimStats()
        self.limiter = _limiter(config)
        self.draws = FaultDraws(config.seed)

    def _latency(self) -> float:
        return self.draws.latency(self.config.latency_ms, self.config.jitter_ms)

    def _filtered(self, text: str) -> bool:
        lowered = text.lower()
        return any(word.lower() in lowered for word in self.config.filter_words)

    async def chat_completions(self, request: web.Request) -> web.Response:
        """``POST /v1/chat/completions``."""
        return await self._complete(request, chat=True)

    async def completions(self, request: web.Request) -> web.Response:
        """``POST /v1/completions``."""
        return await self._complete(request, chat=False)

    async def azure_chat_completions(self, request: web.Request) -> web.Response:
        """``POST /openai/deployments/{deployment}/chat/completions?api-version=V``: Azure
        OpenAI's shape, as the SDK's Azure client calls it (key in an ``api-key`` header)."""
        if not request.query.get("api-version"):
            message = "Missing required query parameter: api-version (simulated Azure)."
            return error_response(400, message, param="api-version")
        if not request.headers.get("api-key"):
            message = "Access denied due to missing subscription key (simulated Azure)."
            return error_response(401, message, type_="invalid_request_error", code="401")
        self.stats.azure += 1
        return await self._complete(request, chat=True)

    def _refused(self) -> web.Response | None:
        """The answer to every request while the credentials are "revoked"."""
        if not self.config.auth_status:
            return None
        self.stats.rejected_auth += 1
        if self.config.auth_status == 401:
            message = "Incorrect API key provided: sk-****. (simulated)"
            return error_response(
                401, message, type_="invalid_request_error", code="invalid_api_key"
            )
        message = "You are not allowed to sample from this model (simulated)."
        return error_response(403, message, type_="invalid_request_error", code="model_not_allowed")

    async def _complete(self, request: web.Request, *, chat: bool) -> web.Response:
        self.stats.requests += 1
        if (refused := self._refused()) is not None:
            return refused
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            req = parse_generation(body, chat=chat)
        except InvalidRequest as exc:
            return error_response(400, exc.message, param=exc.param)
        prompt_tokens = estimate_tokens(req.texts)
        markers = parse_markers("\n".join(req.texts))
        if markers.context_length:
            self.stats.errors += 1
            message = context_length_message(prompt_tokens)
            code = "context_length_exceeded"
            return error_response(400, message, code=code, param=req.field)
        if self.config.storm:
            self.stats.rate_limited += 1
            headers = {"retry-after": "1", "retry-after-ms": "1000"}
            message = f"Rate limit reached for requests on {req.model} (simulated storm)."
            return error_response(
                429, message, type_="requests", code="rate_limit_exceeded", headers=headers
            )
        admission = self.limiter.admit(prompt_tokens + req.max_tokens)
        if not admission.admitted:
            self.stats.rate_limited += 1
            logger.debug("429 (%s): %s", admission.limited_by, admission.headers)
            message, kind = admission.message(req.model), admission.limited_by
            code = "rate_limit_exceeded"
            return error_response(429, message, type_=kind, code=code, headers=admission.headers)
        cfg = self.config
        fault = self.draws.fault(cfg.error_rate, cfg.timeout_rate, cfg.malformed_rate)
        delay = self._latency() + markers.sleep_ms / 1000
        if markers.error_status is not None or fault == "error":
            self.stats.errors += 1
            status = markers.error_status or 500
            await asyncio.sleep(delay)
            injected = "rate_limit_exceeded" if status == 429 else None
            message = f"Simulated HTTP {status} error."
            return error_response(status, message, code=injected, headers=admission.headers)
        if fault == "timeout":
            self.stats.timeouts += 1
            await asyncio.sleep(self.config.hang_seconds)
        if markers.malformed or fault == "malformed":
            self.stats.malformed += 1
            await asyncio.sleep(delay)
            return web.Response(text=MALFORMED_BODY, content_type="application/json")

        out = generate(req.model, req.source, req.max_tokens)
        if markers.content_filter or self._filtered("\n".join(req.texts)):
            out = Generated("", 0, "content_filter")
        elif markers.reply is not None:
            out = Generated(markers.reply, estimate_tokens([markers.reply]), "stop")
        if self.config.tokens_per_second > 0:
            delay += out.completion_tokens / self.config.tokens_per_second
        await asyncio.sleep(delay)
        if chat:
            self.stats.chat_completions += 1
        else:
            self.stats.completions += 1
        self.stats.answered("chat" if chat else "completions", req.model)
        answer = completion_body(req, out, prompt_tokens, chat=chat)
        return web.json_response(answer, headers=admission.headers)

    async def moderations(self, request: web.Request) -> web.Response:
        """``POST /v1/moderations``: flags inputs with words like "kill" or ``[[sim:flag]]``."""
        return await self._answer(request, moderation_body, "moderations")

    async def embeddings(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``: deterministic vectors, close for texts sharing words."""
        return await self._answer(request, embeddings_body, "embeddings")

    async def _answer(
        self,
        request: web.Request,
        body_of: Callable[[dict[str, Any]], dict[str, Any]],
        counter: str,
    ) -> web.Response:
        """A JSON request answered by ``body_of`` (its ``InvalidRequest`` is a 400), after
        the auth check, counted in ``counter``, after the configured latency."""
        self.stats.requests += 1
        if (refused := self._refused()) is not None:
            return refused
        body = await _json_object(request)
        if isinstance(body, web.Response):
            return body
        try:
            answer = body_of(body)
        except InvalidRequest as exc:
            return error_response(400, exc.message, param=exc.param)
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self.stats.answered(counter, body.get("model"))
        await asyncio.sleep(self._latency())
        return web.json_response(answer)

    async def models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        self.stats.requests += 1
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "promptmill"}
            for m in self.config.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /sim/stats``."""
        return web.json_response(asdict(self.stats))

    async def reset(self, request: web.Request) -> web.Response:
        """``POST /sim/reset``: zero the counters and start the limit buckets afresh (full or
        empty, as configured): a new run meets a provider that has not seen the last one."""
        self.stats = SimStats()
        self.limiter = _limiter(self.config)
        return web.json_response(asdict(self.stats))

    async def set_config(self, request: web.Request) -> web.Response:
        """``POST /sim/config``: merge a partial ``SimConfig`` and return the full config."""
        patch = await _json_object(request)
        if isinstance(patch, web.Response):
            return patch
        try:
            new = SimConfig.model_validate(self.config.model_dump() | patch)
        except ValidationError as exc:
            return error_response(400, str(exc))
        old, self.config = self.config, new
        if _limits(new) != _limits(old):
            self.limiter = _limiter(new)
        if new.seed != old.seed:
            self.draws = FaultDraws(new.seed)
        logger.info("simulator config changed: %s", patch)
        return web.json_response(new.model_dump())


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request body as a JSON object, or a 400 OpenAI-style error response."""
    try:
        body = await request.json(loads=json.loads)
    except ValueError:
        return error_response(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        return error_response(400, "The request body must be a JSON object.")
    return body


async def _add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("x-request-id", f"req_{uuid.uuid4().hex}")


SIMULATOR = web.AppKey("simulator", Simulator)


def build_app(config: SimConfig) -> web.Application:
    """The simulator as an aiohttp application (its ``Simulator`` is ``app[SIMULATOR]``)."""
    sim = Simulator(config)
    app = web.Application()
    app[SIMULATOR] = sim
    app.on_response_prepare.append(_add_request_id)
    app.router.add_post("/v1/chat/completions", sim.chat_completions)
    app.router.add_post("/v1/completions", sim.completions)
    app.router.add_post(
        "/openai/deployments/{deployment}/chat/completions", sim.azure_chat_completions
    )
    app.router.add_post("/v1/moderations", sim.moderations)
    app.router.add_post("/v1/embeddings", sim.embeddings)
    app.router.add_get("/v1/models", sim.models)
    app.router.add_get("/sim/stats", sim.get_stats)
    app.router.add_post("/sim/config", sim.set_config)
    app.router.add_post("/sim/reset", sim.reset)
    return app


async def _serve(config: SimConfig, host: str, port: int) -> None:
    app = build_app(config)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1] if runner.addresses else port
        logger.info("model simulator listening on http://%s:%s/v1", host, bound)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("model simulator stopping")
    finally:
        await runner.cleanup()


def parse_quantum(value: str) -> float:
    """``1s``, ``500ms``, ``1m0s`` (OpenAI's duration format) or plain seconds."""
    try:
        return float(value)
    except ValueError:
        seconds = parse_duration(value)
    if seconds is None:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


def _limits(config: SimConfig) -> tuple[int, int, str, float]:
    return config.rpm_limit, config.tpm_limit, config.bucket_start, config.quantum_seconds


def _limiter(config: SimConfig) -> RateLimiter:
    shape = BucketShape(config.bucket_start == "full", config.quantum_seconds)
    return RateLimiter(config.rpm_limit, config.tpm_limit, shape=shape)


_FLAGS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "--latency-ms": ("latency_ms", float),
    "--jitter-ms": ("jitter_ms", float),
    "--tokens-per-second": ("tokens_per_second", float),
    "--rpm": ("rpm_limit", int),
    "--tpm": ("tpm_limit", int),
    "--bucket-start": ("bucket_start", str),
    "--quantum": ("quantum_seconds", parse_quantum),
    "--error-rate": ("error_rate", float),
    "--timeout-rate": ("timeout_rate", float),
    "--malformed-rate": ("malformed_rate", float),
    "--seed": ("seed", int),
}


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until SIGINT/SIGTERM (``python -m promptmill.dev.simulator``)."""
    parser = argparse.ArgumentParser(prog="python -m promptmill.dev.simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    for flag, (name, kind) in _FLAGS.items():
        info = SimConfig.model_fields[name]
        parser.add_argument(flag, dest=name, type=kind, help=f"{info.description}")
    parser.add_argument("--model", dest="models", action="append", help="Repeatable.")
    args = parser.parse_args(argv)
    fields = [*(name for name, _ in _FLAGS.values()), "models"]
    given = {f: getattr(args, f) for f in fields if getattr(args, f) is not None}
    try:
        config = SimConfig.model_validate(given)
    except ValidationError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(_serve(config, args.host, args.port))


if __name__ == "__main__":
    main()
