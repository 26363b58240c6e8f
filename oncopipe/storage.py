"""Object storage behind one small interface.

Every stage reads and writes through :class:`ObjectStore`, an S3 client wrapper; the same
code runs against AWS, the embedded moto server of the local mode, or any S3-compatible
endpoint given by the standard AWS configuration (``AWS_ENDPOINT_URL`` and friends).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

logger = logging.getLogger(__name__)

#: Tag keys written on every object a stage writes.
TAG_RUN_ID = "run-id"
TAG_STEP = "step"


@dataclass(frozen=True)
class ObjectRef:
    """Where an input came from and which version was read. Never its content."""

    bucket: str
    key: str
    etag: str
    size: int
    version_id: str | None = None
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "etag": self.etag,
            "size": self.size,
            "version_id": self.version_id,
            "sha256": self.sha256,
        }


def sha256_hex(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def make_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """Return an S3 client; ``endpoint_url=None`` uses the standard AWS configuration."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"mode": "standard", "max_attempts": 5}),
    )


class ObjectStore:
    """A thin S3 wrapper that tags what it writes and records what it reads."""

    def __init__(self, client: Any) -> None:
        self.client = client

    # -- reading ---------------------------------------------------------------------------
    def head(self, bucket: str, key: str) -> ObjectRef | None:
        """Return the reference of an object, or None when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            meta = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in {
                "404",
                "NoSuchKey",
                "NotFound",
            }:
                return None
            raise
        checksum = meta.get("ChecksumSHA256")
        sha = base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None
        return ObjectRef(
            bucket=bucket,
            key=key,
            etag=str(meta.get("ETag", "")).strip('"'),
            size=int(meta.get("ContentLength", 0)),
            version_id=meta.get("VersionId"),
            sha256=sha,
        )

    def exists(self, bucket: str, key: str) -> bool:
        return self.head(bucket, key) is not None

    def prefix_exists(self, bucket: str, prefix: str) -> bool:
        resp = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return int(resp.get("KeyCount", 0)) > 0

    def get_bytes(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        body = self.client.get_object(**kwargs)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def get_range(self, bucket: str, key: str, length: int, version_id: str | None = None) -> bytes:
        """Return the first ``length`` bytes (for content sniffing without a full read)."""
        if length <= 0:
            return b""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes=0-{length - 1}"}
        if version_id:
            kwargs["VersionId"] = version_id
        body = self.client.get_object(**kwargs)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield str(obj["Key"])

    def get_tags(self, bucket: str, key: str) -> dict[str, str]:
        resp = self.client.get_object_tagging(Bucket=bucket, Key=key)
        return {t["Key"]: t["Value"] for t in resp.get("TagSet", [])}

    # -- writing ---------------------------------------------------------------------------
    def put_bytes(
        self,
        bucket: str,
        key: str,
        data: bytes,
        *,
        tags: Mapping[str, str],
        content_type: str = "application/octet-stream",
    ) -> ObjectRef:
        """Write an object with its tags and a SHA-256 checksum S3 verifies on arrival."""
        digest = hashlib.sha256(data).digest()
        resp = self.client.put_object(
            Bucket=bucket,
            Key=key,
            Body=data,
            ContentType=content_type,
            Tagging=urlencode(dict(tags)),
            ChecksumSHA256=base64.b64encode(digest).decode("ascii"),
        )
        return ObjectRef(
            bucket=bucket,
            key=key,
            etag=str(resp.get("ETag", "")).strip('"'),
            size=len(data),
            version_id=resp.get("VersionId"),
            sha256=digest.hex(),
        )

    def upload_file(
        self, path: str, bucket: str, key: str, *, tags: Mapping[str, str]
    ) -> ObjectRef:
        """Upload a local file (multipart when large) with its tags; return its reference."""
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        self.client.upload_file(path, bucket, key, ExtraArgs={"Tagging": urlencode(dict(tags))})
        ref = self.head(bucket, key)
        if ref is None:  # pragma: no cover - S3 read-after-write is strong
            raise RuntimeError(f"upload to s3://{bucket}/{key} is not visible")
        return ObjectRef(
            bucket=bucket, key=key, etag=ref.etag, size=ref.size, version_id=ref.version_id,
            sha256=digest.hexdigest(),
        )  # fmt: skip

    def download_file(self, bucket: str, key: str, path: str) -> None:
        """Stream an object to a local file (multipart ranges when large)."""
        self.client.download_file(bucket, key, path)

    def copy(
        self,
        src_bucket: str,
        src_key: str,
        dst_bucket: str,
        dst_key: str,
        *,
        tags: Mapping[str, str],
        version_id: str | None = None,
    ) -> None:
        """Server-side copy (multipart above 5 GB, handled by boto3) with new tags."""
        source = {"Bucket": src_bucket, "Key": src_key}
        if version_id:
            source["VersionId"] = version_id
        self.client.copy(
            source,
            dst_bucket,
            dst_key,
            ExtraArgs={"Tagging": urlencode(dict(tags)), "TaggingDirective": "REPLACE"},
        )

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)
