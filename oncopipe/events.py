"""Events that start the ingest flow, in the shapes the adapters receive them."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from oncopipe.errors import OncopipeError
from oncopipe.runs import daily_run_id, validate_run_id
from oncopipe.storage import ObjectRef


class EventError(OncopipeError):
    """An event is not an S3 "Object Created" event the router understands."""


def object_created(event: Mapping[str, Any]) -> ObjectRef:
    """Return the object an EventBridge "Object Created" event (S3 source) refers to.

    Raises:
        EventError: another event type, or fields missing.
    """
    if event.get("source") != "aws.s3" or event.get("detail-type") != "Object Created":
        raise EventError(
            f"expected an aws.s3 'Object Created' event, got source={event.get('source')!r} "
            f"detail-type={event.get('detail-type')!r}"
        )
    try:
        detail = event["detail"]
        obj = detail["object"]
        return ObjectRef(
            bucket=str(detail["bucket"]["name"]),
            key=str(obj["key"]),
            # AWS sends "etag"; some emulators send "eTag".
            etag=str(obj.get("etag", obj.get("eTag", ""))).strip('"'),
            size=int(obj.get("size", 0)),
            version_id=obj.get("version-id") if obj.get("version-id") != "null" else None,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise EventError(f"malformed Object Created event: missing or bad field {e}") from e


def run_id_for(event: Mapping[str, Any]) -> str:
    """Return the run an ingest event belongs to.

    An explicit ``run_id`` (the local worker, a replay) wins. Otherwise uploads are grouped
    into one run per UTC day of the event (``ingest-YYYYMMDD``): a duplicate delivery of
    the same event then finds its manifest and changes nothing.
    """
    explicit = event.get("run_id")
    if explicit:
        return validate_run_id(str(explicit))
    time = str(event.get("time", ""))
    try:
        moment = datetime.fromisoformat(time.replace("Z", "+00:00"))
    except ValueError as e:
        raise EventError(f"event has no usable 'time' ({time!r}) and no run_id") from e
    return daily_run_id(moment)


class RedactedError(Exception):
    """An error whose message was dropped at an adapter's boundary (it may name PHI)."""


def redacted_error(error: BaseException, subject: str) -> RedactedError:
    """Return an error to raise in place of ``error`` from a handler, safe to surface.

    A Lambda's unhandled error becomes the Step Functions error and cause (state output,
    execution history) and a CloudWatch log line, and its message can name an object key
    (``NoSuchKey``, a path in an ``OSError``). The returned error has the same class name,
    so retries and catches on error names (``ClientError``, ...) still match, and a message
    naming only ``subject`` (an opaque reference or a code) and the original type.
    """
    name = type(error).__name__
    cls = type(name, (RedactedError,), {"__module__": __name__, "__qualname__": name})
    return cls(f"{name} while handling {subject}; the message was withheld (it may hold PHI)")
