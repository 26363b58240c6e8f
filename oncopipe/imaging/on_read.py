"""De-identification on read: the core of the S3 Object Lambda adapter (opt-in).

An Object Lambda access point over the ingest bucket hands each GET to the function, which
fetches the original through the presigned ``inputS3Url``, de-identifies it with the same
core as on write, and answers with ``WriteGetObjectResponse``. Errors are Object Lambda
error responses (status, code, message), never a half-written body.

Range and partNumber requests are refused (``416``/``400``): a byte range of a
de-identified object is not a range of the original, and the whole object must be
de-identified before any byte leaves. S3 Object Lambda allows 60 s per response; large
multi-frame objects can exceed it, which is one reason de-identification on write is the
default. The service is also closed to new AWS accounts since 2025-11-07.

The requested key is PHI (exports name files after patients): the status returned for
the log names the object by its opaque reference
(:func:`oncopipe.pseudonym.object_ref`), and failures are logged by type only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlparse

from oncopipe.errors import InputError
from oncopipe.imaging.deid import deidentify_bytes
from oncopipe.imaging.options import DeidOptions
from oncopipe.pseudonym import object_ref

logger = logging.getLogger(__name__)

Fetch = Callable[[str], bytes]
Respond = Callable[..., Any]


def handle_get_object(
    event: Mapping[str, Any],
    *,
    fetch: Fetch,
    respond: Respond,
    secret: bytes,
    options: DeidOptions | None = None,
) -> dict[str, Any]:
    """Answer one Object Lambda GET; return a small status (no PHI) for the log.

    ``fetch(url)`` returns the original bytes; ``respond(**kwargs)`` is
    ``s3.write_get_object_response``.
    """
    context = event["getObjectContext"]
    route = {"RequestRoute": context["outputRoute"], "RequestToken": context["outputToken"]}
    request = event.get("userRequest", {})
    headers = {str(k).lower(): v for k, v in (request.get("headers") or {}).items()}
    query = parse_qs(urlparse(str(request.get("url", ""))).query)
    key = urlparse(str(request.get("url", ""))).path.lstrip("/") or "object"
    obj = object_ref(secret, key)
    if "range" in headers:
        respond(StatusCode=416, ErrorCode="RangeNotSupported",
                ErrorMessage="de-identified objects are served whole: omit the Range header",
                **route)  # fmt: skip
        return {"status": 416, "object": obj}
    if "partNumber" in query:
        respond(StatusCode=400, ErrorCode="PartNumberNotSupported",
                ErrorMessage="de-identified objects are served whole: omit partNumber",
                **route)  # fmt: skip
        return {"status": 400, "object": obj}
    try:
        original = fetch(context["inputS3Url"])
        body, patient, _ = deidentify_bytes(original, source=key, secret=secret, options=options)
    except InputError as e:
        respond(StatusCode=403, ErrorCode="NotReleasable", ErrorMessage=str(e)[:1024], **route)
        return {"status": 403, "object": obj, "reason": e.reason_code}
    except Exception as e:  # noqa: BLE001 - the boundary: an error response, not a half body
        # the exception's text may quote the key or a value: log the type only
        logger.error("de-identification on read failed for %s (%s)", obj, type(e).__name__)
        respond(StatusCode=500, ErrorCode="DeidentificationFailed",
                ErrorMessage=f"could not de-identify ({type(e).__name__})", **route)  # fmt: skip
        return {"status": 500, "object": obj}
    respond(Body=body, ContentType="application/dicom", StatusCode=200, **route)
    return {"status": 200, "object": obj, "patient_key": patient}
