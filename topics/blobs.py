"""The blob store: where input, output and error files of the HTTP front door live.

One small interface, :class:`BlobStore`, with two implementations chosen by URL
(:func:`open_blob_store`): a local directory (``file:///path`` or a plain path; the
embedded default) and any S3-compatible store (``s3://bucket/prefix``; see
:mod:`topics.blobs_s3`). Blobs are written from a stream and read as a stream, so neither
side ever holds a whole file; a blob appears whole or not at all (a local write goes to a
temporary name and is renamed; an S3 multipart upload completes or is aborted).
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from schemas import PromptmillError

CHUNK_BYTES = 1 << 20
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,511}$")


class BlobNotFound(PromptmillError):
    """No blob under that key."""


class BlobStore(Protocol):
    """Streamed, whole-or-nothing blobs under string keys (``[A-Za-z0-9_.-/]``)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the concatenated ``chunks`` under ``key`` (replacing any blob there);
        returns the size in bytes. A failure part-way leaves no blob behind."""
        ...

    def get(self, key: str) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; raises :class:`BlobNotFound` on first iteration."""
        ...

    async def size(self, key: str) -> int | None:
        """The blob's size, or ``None`` if there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob (nothing happens if there is none)."""
        ...


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise ValueError(f"invalid blob key {key!r}")
    return key


class LocalBlobStore:
    """Blobs as files under one directory (one node, or a shared volume)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    async def stop(self) -> None:
        return None

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        path = self._path(key)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        size = 0
        stream = await asyncio.to_thread(partial.open, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                await asyncio.to_thread(stream.write, chunk)
            await asyncio.to_thread(_flush, stream)
        except BaseException:
            stream.close()
            partial.unlink(missing_ok=True)
            raise
        stream.close()
        await asyncio.to_thread(os.replace, partial, path)
        return size

    async def get(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            stream = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"no blob {key!r}") from None
        try:
            while chunk := await asyncio.to_thread(stream.read, CHUNK_BYTES):
                yield chunk
        finally:
            stream.close()

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self._path(key).stat)).st_size
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)


def _flush(stream: object) -> None:
    stream.flush()  # type: ignore[attr-defined]
    os.fsync(stream.fileno())  # type: ignore[attr-defined]


def open_blob_store(url: str) -> BlobStore:
    """The store a URL names: ``s3://bucket[/prefix]`` or a local directory."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        from topics.blobs_s3 import S3BlobStore  # only deployments with S3 need aiobotocore

        store: BlobStore = S3BlobStore.from_url(url)
        return store
    if parsed.scheme in ("", "file"):
        return LocalBlobStore(Path(parsed.path if parsed.scheme == "file" else url))
    raise ValueError(f"unsupported blob store URL {url!r} (use s3://bucket or a directory)")


async def read_all(store: BlobStore, key: str) -> bytes:
    """A whole (small) blob; for tests and metadata, never for batch files."""
    return b"".join([chunk async for chunk in store.get(key)])


async def lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Split a chunk stream into lines (without their ``\\n``)."""
    rest = b""
    async for chunk in chunks:
        rest += chunk
        *whole, rest = rest.split(b"\n")
        for line in whole:
            yield line
    if rest:
        yield rest
