"""What the model simulator answers: request parsing, deterministic text, wire shapes.

Everything here is a pure function of the request (no I/O, no clock): the completion text is drawn
from a fixed vocabulary by a sha256 of ``(model, messages or prompt)``, so the
same input always gives the same words and the same usage numbers, on every
machine and every run. Tests steer the simulator with markers written into the
prompt text:

- ``[[sim:error=NNN]]``: answer HTTP NNN with an OpenAI-style error body.
- ``[[sim:context_length]]``: answer 400 ``context_length_exceeded``.
- ``[[sim:content_filter]]``: answer 200 with ``finish_reason="content_filter"``.
- ``[[sim:sleep=MS]]``: add MS milliseconds of latency (several add up).
- ``[[sim:malformed]]``: answer 200 with a body that is not JSON.
- ``[[sim:flag]]`` (moderations only): flag the input.
- ``[[sim:reply=TEXT]]``: answer exactly TEXT (up to the closing brackets), e.g. a
  classifier's verdict.
- ``[[sim:reply_chars=N]]``: answer N characters (a result too large for its topic).

The response bodies follow the OpenAI wire format closely enough for the
official ``openai`` SDK to parse them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_TOKENS = 64
MALFORMED_BODY = '{"id": "sim-malformed", "choices": [{'

VOCABULARY = (
    "the", "a", "model", "prompt", "token", "stream", "batch", "answer", "simple", "quick",
    "result", "kafka", "topic", "worker", "cache", "limit", "value", "signal", "record", "field",
    "steady", "bright", "quiet", "river", "stone", "cloud", "paper", "window", "garden", "silver",
    "runs", "reads", "writes", "keeps", "moves", "holds", "finds", "makes", "takes", "gives",
    "and", "of", "to", "in", "with", "for", "on", "by", "from", "over",
    "clear", "small", "large", "early", "late", "north", "south", "green", "blue", "amber",
    "again", "often", "always", "soon",
)  # fmt: skip

# Whole-word prefixes -> moderation category ("attacks", "hateful" match; "skill" does not).
FLAG_WORDS = {
    "kill": "violence",
    "murder": "violence",
    "attack": "violence",
    "violence": "violence",
    "violent": "violence",
    "hate": "hate",
    "harass": "harassment",
    "suicide": "self-harm",
}
MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
    "illicit/violent", "self-harm", "self-harm/instructions", "self-harm/intent", "sexual",
    "sexual/minors", "violence", "violence/graphic",
)  # fmt: skip
FLAG_MARKER = "[[sim:flag]]"

_ERROR_RE = re.compile(r"\[\[sim:error=(\d{3})\]\]")
_SLEEP_RE = re.compile(r"\[\[sim:sleep=(\d+(?:\.\d+)?)\]\]")
_REPLY_RE = re.compile(r"\[\[sim:reply=(.*?)\]\]", re.DOTALL)
_REPLY_CHARS_RE = re.compile(r"\[\[sim:reply_chars=(\d{1,9})\]\]")
_WORD_RE = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Markers:
    """The magic markers found in one request's text."""

    error_status: int | None = None
    context_length: bool = False
    content_filter: bool = False
    malformed: bool = False
    sleep_ms: float = 0.0
    reply: str | None = None


def parse_markers(text: str) -> Markers:
    """Find the magic markers in ``text`` (statuses outside 400-599 become 500)."""
    if "[[sim:" not in text:
        return Markers()
    error = _ERROR_RE.search(text)
    status = int(error.group(1)) if error else None
    if status is not None and not 400 <= status <= 599:
        status = 500
    return Markers(
        error_status=status,
        context_length="[[sim:context_length]]" in text,
        content_filter="[[sim:content_filter]]" in text,
        malformed="[[sim:malformed]]" in text,
        sleep_ms=sum(float(ms) for ms in _SLEEP_RE.findall(text)),
        reply=reply.group(1)
        if (reply := _REPLY_RE.search(text))
        else ("x" * int(chars.group(1)) if (chars := _REPLY_CHARS_RE.search(text)) else None),
    )


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def message_texts(messages: list[Any]) -> list[str]:
    """The text of each chat message (string content or text content parts)."""
    return [_content_text(m.get("content")) for m in messages if isinstance(m, dict)]


def prompt_texts(prompt: Any) -> list[str]:
    """The text of a completions ``prompt`` (a string or a list of strings)."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        return [p for p in prompt if isinstance(p, str)]
    return []


def estimate_tokens(texts: list[str]) -> int:
    """Prompt token estimate: ceil(characters / 4), at least 1."""
    return max(1, math.ceil(sum(len(t) for t in texts) / 4))


class InvalidRequest(Exception):
    """The request body is not a valid completion request (answered with HTTP 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class GenerationRequest:
    """The parts of a chat/completions request body the simulator uses."""

    model: str
    field: str  # "messages" or "prompt"
    source: Any  # the messages or the prompt, as sent; hashed for the text
    texts: list[str]
    max_tokens: int


def parse_generation(body: dict[str, Any], *, chat: bool) -> GenerationRequest:
    """Validate a chat (``chat=True``) or legacy completions body; raise ``InvalidRequest``."""
    if body.get("stream"):
        raise InvalidRequest("Streaming is not supported by the simulator.", "stream")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", "model")
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens must be an integer >= 1", "max_tokens")
    field = "messages" if chat else "prompt"
    source = body.get(field)
    if chat:
        if not isinstance(source, list) or not source:
            raise InvalidRequest("'messages' must be a non-empty array", field)
        return GenerationRequest(model, field, source, message_texts(source), max_tokens)
    if not isinstance(source, str | list):
        raise InvalidRequest("'prompt' must be a string or an array of strings", field)
    return GenerationRequest(model, field, source, prompt_texts(source), max_tokens)


def context_length_message(prompt_tokens: int) -> str:
    """The 400 message for ``[[sim:context_length]]``, worded like OpenAI's."""
    return (
        f"This model's maximum context length was exceeded ({prompt_tokens} tokens "
        "requested; simulated by [[sim:context_length]])."
    )


@dataclass(frozen=True)
class Generated:
    """A deterministic completion."""

    text: str
    completion_tokens: int
    finish_reason: str  # "stop" or "length"


def generate(model: str, source: Any, max_tokens: int) -> Generated:
    """Deterministic text for ``(model, messages or prompt)``, capped at ``max_tokens``."""
    payload = json.dumps([model, source], sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(payload.encode()).digest()
    natural = 8 + int.from_bytes(digest[:8], "big") % 40
    count = min(max_tokens, natural)
    stream = b""
    block = 0
    while len(stream) < count:
        stream += hashlib.sha256(digest + block.to_bytes(4, "big")).digest()
        block += 1
    words = [VOCABULARY[b % len(VOCABULARY)] for b in stream[:count]]
    text = " ".join(words).capitalize() + "." if words else ""
    return Generated(text, count, "length" if max_tokens < natural else "stop")


def moderation_body(body: dict[str, Any]) -> dict[str, Any]:
    """The moderation response for a request body; ``input`` is a string or list of strings."""
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
        raise InvalidRequest("'input' must be a string or an array of strings", "input")
    return {
        "id": f"modr-{uuid.uuid4().hex[:24]}",
        "model": str(body.get("model") or "omni-moderation-latest"),
        "results": [moderate(text) for text in inputs],
    }


EMBEDDING_DIMENSIONS = 256


def embeddings_body(body: dict[str, Any]) -> dict[str, Any]:
    """The ``/v1/embeddings`` response for a request body (``input``: a string or a list of
    strings): deterministic vectors in which texts that share words are close."""
    inputs = body.get("input")
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise InvalidRequest("'input' must be a string or a non-empty array of strings", "input")
    tokens = sum(estimate_tokens([text]) for text in inputs)
    return {
        "object": "list",
        "model": str(body.get("model") or "promptmill-sim-embed"),
        "data": [
            {"object": "embedding", "index": i, "embedding": embed(text)}
            for i, text in enumerate(inputs)
        ],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def embed(text: str) -> list[float]:
    """A unit vector of hashed words (and their pairs, for a little order): the cosine of
    two texts grows with the words they share; the same text, the same vector."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    words = _WORD_RE.findall(text.lower())
    features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    for feature in features:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "big") % EMBEDDING_DIMENSIONS
        vector[index] += 1.0 if digest[4] & 1 else -1.0
    norm = sum(x * x for x in vector) ** 0.5
    return [round(x / norm, 6) for x in vector] if norm else vector


def moderate(text: str) -> dict[str, Any]:
    """One OpenAI moderation result for ``text``, flagged by word list or ``[[sim:flag]]``."""
    hit: set[str] = set()
    for word in _WORD_RE.findall(text.lower()):
        for prefix, category in FLAG_WORDS.items():
            if word.startswith(prefix):
                hit.add(category)
    if FLAG_MARKER in text:
        hit.add("violence")
    digest = hashlib.sha256(text.encode()).digest()
    scores = {
        name: (0.9 + digest[i] / 2560) if name in hit else digest[i] / 256_000
        for i, name in enumerate(MODERATION_CATEGORIES)
    }
    return {
        "flagged": bool(hit),
        "categories": {name: name in hit for name in MODERATION_CATEGORIES},
        "category_scores": scores,
        "category_applied_input_types": {name: ["text"] for name in MODERATION_CATEGORIES},
    }


def completion_body(
    request: GenerationRequest, out: Generated, prompt_tokens: int, *, chat: bool
) -> dict[str, Any]:
    """A ``chat.completion`` (``chat=True``) or ``text_completion`` response body."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": out.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": out.text, "refusal": None}
    else:
        choice["text"] = out.text
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [choice],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": out.completion_tokens,
            "total_tokens": prompt_tokens + out.completion_tokens,
        },
        "system_fingerprint": "promptmill-sim",
    }


_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "requests",
}


def error_body(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """An OpenAI error body; the type defaults from the status (5xx -> "server_error")."""
    if type_ is None:
        type_ = (
            "server_error" if status >= 500 else _ERROR_TYPES.get(status, "invalid_request_error")
        )
    return {"error": {"message": message, "type": type_, "code": code, "param": param}}
