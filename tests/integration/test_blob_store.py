"""The blob store contract, against a local directory and a real S3 server (SeaweedFS).

Every test runs on both :class:`~topics.blobs.LocalBlobStore` and
:class:`~topics.blobs_s3.S3BlobStore`, the latter opened by URL on a SeaweedFS started
once for this module (:mod:`promptmill.dev.s3`). The pinned SeaweedFS is built on first
use, which takes minutes on two cores: the S3 tests' timeout covers that build while the
binary is not cached yet. They are skipped only if that build fails, with the reason.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from promptmill.dev.s3 import (
    BUILD_TIMEOUT_S,
    S3Server,
    weed_binary,
)
from topics.blobs import CHUNK_BYTES, BlobNotFound, BlobStore, open_blob_store, read_all
from topics.blobs_s3 import PART_BYTES, S3BlobStore

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

_S3_TIMEOUT = 120 + (0 if weed_binary().is_file() else int(BUILD_TIMEOUT_S))
BUCKET = "promptmill-test"
BIG = 20_000_000  # > 2 parts of 8 MiB: a multipart upload of 3 parts


@pytest.fixture(
    params=[
        pytest.param("local", marks=pytest.mark.timeout(60)),
        pytest.param("s3", marks=pytest.mark.timeout(_S3_TIMEOUT)),
    ]
)
def blob_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The URL of an empty store: a directory, or a fresh prefix in the S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "blobs")
    server: S3Server = request.getfixturevalue("s3_server")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return f"s3://{BUCKET}/run-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def store(blob_url: str) -> AsyncIterator[BlobStore]:
    blobs = open_blob_store(blob_url)
    await blobs.start()
    await blobs.start()  # idempotent
    try:
        yield blobs
    finally:
        await blobs.stop()
        await blobs.stop()


def _payload(size: int, seed: int = 7) -> bytes:
    return random.Random(seed).randbytes(size)


async def _chunks(data: bytes, sizes: tuple[int, ...]) -> AsyncIterator[bytes]:
    """``data`` in chunks cycling through ``sizes`` (odd sizes: parts never align)."""
    offset, i = 0, 0
    while offset < len(data):
        step = sizes[i % len(sizes)]
        yield data[offset : offset + step]
        offset, i = offset + step, i + 1


class Boom(Exception):
    pass


async def _failing(data: bytes, after: int) -> AsyncIterator[bytes]:
    """``data`` in 1 MB chunks, then an error once ``after`` bytes went out."""
    sent = 0
    async for chunk in _chunks(data, (1_000_003,)):
        if sent >= after:
            raise Boom("source failed mid-stream")
        yield chunk
        sent += len(chunk)


async def _multipart_uploads(store: BlobStore) -> list[object]:
    """Unfinished multipart uploads under the store's prefix ([] for a local store)."""
    if not isinstance(store, S3BlobStore):
        return []
    client, _ = store._object("x")
    answer = await client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    uploads: list[object] = answer.get("Uploads", [])
    return uploads


async def test_big_streamed_blob_round_trips(store: BlobStore) -> None:
    data = _payload(BIG)
    started = time.monotonic()
    assert await store.put("batches/b1/input.jsonl", _chunks(data, (65_537, 1_048_573, 333))) == BIG
    put_s = time.monotonic() - started
    assert await store.size("batches/b1/input.jsonl") == BIG
    started = time.monotonic()
    pieces = [chunk async for chunk in store.get("batches/b1/input.jsonl")]
    get_s = time.monotonic() - started
    assert b"".join(pieces) == data
    assert all(0 < len(piece) <= CHUNK_BYTES for piece in pieces)
    if isinstance(store, S3BlobStore):  # a multipart object's ETag ends in -<parts>
        client, where = store._object("batches/b1/input.jsonl")
        etag = (await client.head_object(**where))["ETag"]
        assert etag.strip('"').endswith(f"-{-(-BIG // PART_BYTES)}"), etag
    mb = BIG / 1e6
    print(f"{type(store).__name__}: put {mb / put_s:.0f} MB/s, get {mb / get_s:.0f} MB/s")


async def test_small_and_empty_blobs(store: BlobStore) -> None:
    assert await store.put("small.json", _chunks(b'{"a": 1}\n', (3,))) == 9
    assert await read_all(store, "small.json") == b'{"a": 1}\n'
    assert await store.put("empty", _chunks(b"", (1,))) == 0
    assert await store.size("empty") == 0
    assert await read_all(store, "empty") == b""


async def test_put_replaces_and_delete_removes(store: BlobStore) -> None:
    await store.put("k", _chunks(b"first version, longer", (5,)))
    await store.put("k", _chunks(b"second", (4,)))
    assert await read_all(store, "k") == b"second"
    assert await store.size("k") == 6
    await store.delete("k")
    assert await store.size("k") is None
    await store.delete("k")  # deleting nothing is fine
    with pytest.raises(BlobNotFound):
        await read_all(store, "k")


async def test_missing_key(store: BlobStore) -> None:
    assert await store.size("no/such/blob") is None
    chunks = store.get("no/such/blob")
    with pytest.raises(BlobNotFound):
        await anext(chunks)


@pytest.mark.parametrize(
    "after", [2_000_000, PART_BYTES + 3_000_000], ids=["one-part", "multipart"]
)
async def test_failed_put_leaves_no_blob_and_keeps_the_old_one(
    store: BlobStore, after: int
) -> None:
    data = _payload(after + 4_000_000, seed=after)
    with pytest.raises(Boom):
        await store.put("fresh/blob", _failing(data, after))
    assert await store.size("fresh/blob") is None
    await store.put("kept/blob", _chunks(b"the old blob", (4,)))
    with pytest.raises(Boom):
        await store.put("kept/blob", _failing(data, after))
    assert await read_all(store, "kept/blob") == b"the old blob"
    assert await _multipart_uploads(store) == []  # the multipart upload was aborted


async def test_keys_with_slashes_are_separate_blobs(store: BlobStore) -> None:
    keys = [
        "t1/batches/b-1/input.jsonl",
        "t1/batches/b-1/output.jsonl",
        "t1/batches/b-2/input.jsonl",
    ]
    for key in keys:
        await store.put(key, _chunks(key.encode(), (7,)))
    await store.delete(keys[0])
    assert await store.size(keys[0]) is None
    for key in keys[1:]:
        assert await read_all(store, key) == key.encode()
    for bad in ("../escape", "/absolute", "a/../b", "a b"):
        with pytest.raises(ValueError):
            await store.size(bad)


def test_s3_url_parsing() -> None:
    env = {"PROMPTMILL_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "eu-west-1"}
    store = S3BlobStore.from_url("s3://bucket-a/some/prefix/", env)
    assert (store.bucket, store.prefix) == ("bucket-a", "some/prefix")
    assert (store.endpoint_url, store.region) == ("http://127.0.0.1:9", "eu-west-1")
    plain = S3BlobStore.from_url("s3://bucket-b", {})
    assert (plain.prefix, plain.endpoint_url, plain.region) == ("", None, "us-east-1")
    with pytest.raises(ValueError):
        S3BlobStore.from_url("s3:///no-bucket", {})
