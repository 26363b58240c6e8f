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
from urllib.parse import unquote_plus, urlencode

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
    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectRef | None:
        """Return the reference of an object (its current version, or ``version_id``).

        Returns:
            None when the object (or that version) does not exist or is a delete marker.
        """
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            meta = self.client.head_object(**kwargs)
        except ClientError as e:
            # 405: HEAD of a delete marker's version id
            if _error_code(e) in {"404", "NoSuchKey", "NotFound", "NoSuchVersion", "405"}:
                return None
            # S3 answers a HEAD of a missing key with 403, not 404, when the caller may
            # list the bucket only under a prefix (our roles' ListBucket carries an
            # s3:prefix condition, which a HEAD does not satisfy). A listing of exactly
            # that prefix is allowed: absent there means absent.
            if _error_code(e) in {"403", "AccessDenied", "Forbidden"} and not self._listed(
                bucket, key
            ):
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

    def resolve(self, ref: ObjectRef) -> ObjectRef | None:
        """Return the current reference of an event's object, or None if it is gone.

        Event keys may arrive URL-encoded (spaces as '+'); the decoded key is tried when the
        key as given does not exist. The version and ETag come from S3, not the event.
        """
        found = self.head(ref.bucket, ref.key)
        if found is None and unquote_plus(ref.key) != ref.key:
            found = self.head(ref.bucket, unquote_plus(ref.key))
        return found

    def _listed(self, bucket: str, key: str) -> bool:
        """Return True when a listing of ``key`` as a prefix shows the key itself.

        Raises:
            ClientError: the listing is refused too (then the 403 was a real denial).
        """
        resp = self.client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return any(obj.get("Key") == key for obj in resp.get("Contents", []))

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

    def delete(self, bucket: str, key: str, *, if_match: str | None = None) -> str | None:
        """Delete an object: in a versioned bucket this places a delete marker.

        With ``if_match`` (an ETag) S3 deletes only while the current version still has
        that ETag (conditional delete); an endpoint that does not know the condition gets
        the plain delete, the caller having checked the version just before.

        Returns:
            The version id of the delete marker (None in an unversioned bucket).

        Raises:
            PreconditionFailed: the current version no longer has ``if_match`` as ETag.
        """
        from botocore.exceptions import ClientError

        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if if_match:
            kwargs["IfMatch"] = f'"{if_match.strip(chr(34))}"'
        try:
            resp = self.client.delete_object(**kwargs)
        except ClientError as e:
            code = _error_code(e)
            if code in {"PreconditionFailed", "412"}:
                raise PreconditionFailed(bucket) from e
            if if_match and code in {"NotImplemented", "InvalidArgument", "501"}:
                resp = self.client.delete_object(Bucket=bucket, Key=key)
            else:
                raise
        version = resp.get("VersionId")
        return str(version) if version else None

    def versions(self, bucket: str, key: str, limit: int = 2) -> list[ObjectVersion]:
        """Return the newest ``limit`` versions of exactly ``key`` (delete markers included).

        Needs ``s3:ListBucketVersions``; returns newest first.
        """
        found: list[ObjectVersion] = []
        paginator = self.client.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            entries = [
                ObjectVersion(str(v["VersionId"]), str(v.get("ETag", "")).strip('"'), False,
                              v["LastModified"], bool(v.get("IsLatest")))
                for v in page.get("Versions", []) if v["Key"] == key
            ] + [
                ObjectVersion(str(m["VersionId"]), "", True, m["LastModified"],
                              bool(m.get("IsLatest")))
                for m in page.get("DeleteMarkers", []) if m["Key"] == key
            ]  # fmt: skip
            found.extend(entries)
            if len(found) >= limit:  # a key's versions are listed newest first
                break
        # the latest first, then newest to oldest (a page lists versions and delete markers
        # apart; LastModified orders them, to the millisecond S3 gives)
        found.sort(key=lambda v: (not v.is_latest, -v.last_modified.timestamp()))
        return found[:limit]

    def restore_version(self, bucket: str, key: str, version_id: str, *, size: int,
                        if_match: str | None = None) -> None:  # fmt: skip
        """Make an older version of an object current again (a copy of it onto itself).

        Tags and metadata come with the copy. Objects up to 5 GB are copied in one request,
        conditional on the current version's ETag (``if_match``) where S3 supports it;
        larger ones by the managed multipart copy.

        Raises:
            PreconditionFailed: the current version no longer has ``if_match`` as ETag.
        """
        from botocore.exceptions import ClientError

        source = {"Bucket": bucket, "Key": key, "VersionId": version_id}
        if size > MAX_SINGLE_COPY_BYTES:
            self.client.copy(source, bucket, key, ExtraArgs={"TaggingDirective": "COPY"})
            return
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "CopySource": source,
                                  "TaggingDirective": "COPY"}  # fmt: skip
        if if_match:
            kwargs["IfMatch"] = f'"{if_match.strip(chr(34))}"'
        try:
            self.client.copy_object(**kwargs)
        except ClientError as e:
            code = _error_code(e)
            if code in {"PreconditionFailed", "412"}:
                raise PreconditionFailed(bucket) from e
            if if_match and code in {"NotImplemented", "InvalidArgument", "501"}:
                kwargs.pop("IfMatch")
                self.client.copy_object(**kwargs)
            else:
                raise


#: Above this, CopyObject refuses a single-request copy.
MAX_SINGLE_COPY_BYTES = 5 * 1024**3


class PreconditionFailed(Exception):
    """A conditional write or delete found another version than expected (S3 412)."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"s3://{bucket}: the object changed since it was checked")


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object as ``ListObjectVersions`` lists it."""

    version_id: str
    etag: str
    delete_marker: bool
    last_modified: Any
    is_latest: bool


def is_access_denied(error: BaseException) -> bool:
    """Return True for an S3 error that says the caller's role may not do this (403)."""
    return _error_code(error) in {"AccessDenied", "403", "Forbidden"}


def _error_code(error: Any) -> str:
    response = getattr(error, "response", {}) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code or str(status or "")
