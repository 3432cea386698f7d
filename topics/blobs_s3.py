"""The S3 blob store: blobs as objects in one bucket of any S3-compatible service.

Writes stream through memory one part at a time: a blob of up to :data:`PART_BYTES` is
one ``PutObject``, a larger one a multipart upload of :data:`PART_BYTES` parts that is
completed only after its last part, and aborted on any failure (the iterator raising,
the task cancelled, the service refusing), so a blob appears whole or not at all and an
older blob under the same key stays as it was. Reads stream the object body in chunks.

Needs the ``s3`` extra (``aiobotocore``). Credentials come from the usual botocore chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Set
from typing import Any
from urllib.parse import urlparse

from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import ClientError

from topics.blobs import CHUNK_BYTES, BlobNotFound, check_key

PART_BYTES = 8 << 20  # multipart part size (S3's minimum for all but the last part is 5 MiB)
ENDPOINT_ENV = "PROMPTMILL_S3_ENDPOINT_URL"
_MISSING = frozenset({"NoSuchKey", "NotFound", "404"})


def _error_in(exc: ClientError, codes: Set[str]) -> bool:
    error: Mapping[str, Any] = exc.response.get("Error", {})
    return str(error.get("Code")) in codes


class S3BlobStore:
    """Blobs under ``prefix/`` in ``bucket``; path-style addressing when ``endpoint_url`` is set."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] = os.environ) -> S3BlobStore:
        """The store for ``s3://bucket[/prefix]``; endpoint from ``PROMPTMILL_S3_ENDPOINT_URL``
        (absent: AWS itself), region from ``AWS_DEFAULT_REGION`` (default ``us-east-1``)."""
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
        return cls(
            parsed.netloc,
            parsed.path,
            endpoint_url=env.get(ENDPOINT_ENV) or None,
            region=env.get("AWS_DEFAULT_REGION") or "us-east-1",
        )

    async def start(self) -> None:
        """Create the client, and the bucket if there is none; a no-op when started."""
        if self._client is not None:
            return
        config = Config(
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
        )
        creator = get_session().create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, config=config
        )
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(creator)
            await self._ensure_bucket(client)
            self._client, self._stack = client, stack.pop_all()

    async def _ensure_bucket(self, client: Any) -> None:
        try:
            await client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if not _error_in(exc, _MISSING | {"NoSuchBucket"}):
                raise
        options: dict[str, Any] = {}
        if self.region != "us-east-1":  # AWS wants the region named everywhere else
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            await client.create_bucket(Bucket=self.bucket, **options)
        except ClientError as exc:
            if not _error_in(exc, {"BucketAlreadyOwnedByYou"}):  # another node was first
                raise

    async def stop(self) -> None:
        """Close the client; a no-op when stopped."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _object(self, key: str) -> tuple[Any, dict[str, str]]:
        if self._client is None:
            raise RuntimeError("S3BlobStore used before start()")
        name = f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)
        return self._client, {"Bucket": self.bucket, "Key": name}

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> int:
        """Store the stream under ``key``: one PutObject or a multipart upload (see module)."""
        client, where = self._object(key)
        buffer, size, upload_id = bytearray(), 0, None
        parts: list[dict[str, Any]] = []

        async def send(body: bytes) -> None:
            number = len(parts) + 1
            answer = await client.upload_part(
                **where, UploadId=upload_id, PartNumber=number, Body=body
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            async for chunk in chunks:
                buffer += chunk
                size += len(chunk)
                while len(buffer) > PART_BYTES:  # the last part is never empty
                    if upload_id is None:
                        upload_id = (await client.create_multipart_upload(**where))["UploadId"]
                    await send(bytes(buffer[:PART_BYTES]))
                    del buffer[:PART_BYTES]
            if upload_id is None:
                await client.put_object(**where, Body=bytes(buffer))
                return size
            await send(bytes(buffer))
            await client.complete_multipart_upload(
                **where, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await client.abort_multipart_upload(**where, UploadId=upload_id)
            raise
        return size

    async def get(self, key: str) -> AsyncIterator[bytes]:
        """The blob in chunks of at most :data:`~topics.blobs.CHUNK_BYTES`."""
        client, where = self._object(key)
        try:
            response = await client.get_object(**where)
        except ClientError as exc:
            if _error_in(exc, _MISSING):
                raise BlobNotFound(f"no blob {key!r}") from None
            raise
        async with response["Body"] as body:
            while chunk := await body.read(CHUNK_BYTES):
                yield chunk

    async def size(self, key: str) -> int | None:
        """The object's ``ContentLength``, or ``None`` if there is none."""
        client, where = self._object(key)
        try:
            head = await client.head_object(**where)
        except ClientError as exc:
            if _error_in(exc, _MISSING):
                return None
            raise
        return int(head["ContentLength"])

    async def delete(self, key: str) -> None:
        """Delete the object (S3 answers the same whether or not it existed)."""
        client, where = self._object(key)
        await client.delete_object(**where)
