"""Validating a batch input file while it streams in, line by line, never held whole.

:class:`UploadCheck` sits between the request body and the blob store: every chunk passes
through unchanged, and each complete line is checked as OpenAI checks a batch input file
(JSON, ``custom_id`` present and unique, ``method`` POST, ``url`` the batch endpoint, a
body that becomes a job, a model the key may use). A line longer than the job size limit
is counted past, never buffered. Hard limits stop the upload at once
(:class:`UploadRefused`): the file's size and its number of requests. Per-line problems
are collected (the first :data:`~schemas.openai.MAX_ERRORS`) and make a batch created from
the file ``failed`` with them, as OpenAI's validation does.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field

from producers.reader import InputFormat, LineError, LineParser
from schemas import ErrorCode, PromptJob, PromptmillError
from schemas.openai import MAX_ERRORS, BatchError

_CODES = {
    ErrorCode.INVALID_JSON: "invalid_json_line",
    ErrorCode.PAYLOAD_TOO_LARGE: "line_too_large",
}


class UploadRefused(PromptmillError):
    """The upload breaks a hard limit; ``status`` and ``error_code`` are the HTTP answer."""

    def __init__(self, message: str, *, status: int, error_code: str, param: str = "file"):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.param = param


@dataclass
class UploadCheck:
    """Validates the lines of a stream as it passes (see the module docstring)."""

    max_bytes: int
    max_requests: int
    max_line_bytes: int
    tenant: str
    models: list[str] | None = None  # the key's allow-list (None: any)
    size: int = 0
    requests: int = 0
    errors: list[BatchError] = field(default_factory=list)
    error_count: int = 0
    _line: int = 0
    _buffer: bytearray = field(default_factory=bytearray)
    _skipping: int = 0  # bytes of an over-long line read past so far
    _ids: set[bytes] = field(default_factory=set)
    _parser: LineParser = field(init=False)

    def __post_init__(self) -> None:
        self._parser = LineParser(
            batch_id="validate", tenant=self.tenant, fmt=InputFormat.OPENAI_BATCH
        )

    async def passing(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """``chunks`` unchanged, checked on the way; raises :class:`UploadRefused`."""
        async for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise UploadRefused(
                    f"the file is over the limit of {self.max_bytes:,} bytes",
                    status=413,
                    error_code="file_too_large",
                )
            self._feed(chunk)
            yield chunk
        self._end()

    def _feed(self, chunk: bytes) -> None:
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if self._skipping:
                self._skipping += len(piece)
            elif len(self._buffer) + len(piece) > self.max_line_bytes:
                self._skipping = len(self._buffer) + len(piece)
                self._buffer.clear()
            else:
                self._buffer += piece
            if end < 0:
                return
            self._line_done()
            start = end + 1

    def _end(self) -> None:
        if self._buffer or self._skipping:
            self._line_done()
        if self.requests == 0 and self.error_count == 0:
            raise UploadRefused("the file has no requests", status=400, error_code="empty_file")

    def _line_done(self) -> None:
        self._line += 1
        number, skipped = self._line, self._skipping
        raw = bytes(self._buffer).removesuffix(b"\r")
        self._buffer.clear()
        self._skipping = 0
        if skipped:
            self._error(
                number,
                "line_too_large",
                f"line is {skipped:,} bytes, over the limit of {self.max_line_bytes:,}",
            )
            return
        if not raw.strip():
            return
        item = self._parser.parse(number, raw)
        if item is None:
            return
        self.requests += 1
        if self.requests > self.max_requests:
            raise UploadRefused(
                f"the file has more than {self.max_requests:,} requests (line {number})",
                status=400,
                error_code="too_many_requests",
            )
        if isinstance(item, LineError):
            self._error(number, _CODES.get(item.code, "invalid_request"), item.message)
            return
        self._check_job(number, item)

    def _check_job(self, number: int, job: PromptJob) -> None:
        custom_id = job.custom_id or ""
        digest = hashlib.blake2b(custom_id.encode(), digest_size=16).digest()
        if digest in self._ids:
            self._error(
                number,
                "duplicate_custom_id",
                f"custom_id {custom_id[:100]!r} is used by an earlier line",
                "custom_id",
            )
        self._ids.add(digest)
        # a template's own model is not known here: the allow-list binds the models named
        if (
            self.models is not None
            and (job.model is not None or job.template is None)
            and (job.model not in self.models)
        ):
            self._error(
                number,
                "model_not_allowed",
                f"model {job.model!r} is not allowed for this API key",
                "body.model",
            )

    def _error(self, line: int, code: str, message: str, param: str | None = None) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(BatchError(code=code, message=message, param=param, line=line))
