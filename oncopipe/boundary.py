"""What a job adapter says about an item or a failure: codes and references, never PHI.

The stdout and stderr of a Batch job or a SageMaker Processing job go to CloudWatch Logs,
where analysts and operators read them. Ingest object keys name patients, and an error's
message or an item's readable reason can carry one (``fastq/<name>_R1.fastq.gz: read 3:
...``). So a job adapter (``python -m batch_jobs.genomics``, ``processing.radiomics``,
``processing.cohort``) reports only:

- what it was asked to do (run id, step, sample or build id),
- an item's outcome from an allow-list of its summary fields (status, reason code, counts,
  curated keys made of pseudonymous keys),
- for a failure: the exception's type, the reason code of an
  :class:`~oncopipe.errors.InputError`, the opaque reference
  (:func:`oncopipe.pseudonym.object_ref`) of its source where the adapter holds the secret,
  and the code and operation of each AWS error behind it (what the local IAM check and an
  operator need), never a message.

The readable reason stays in the quarantine zone's reason document (or, for curated-only
stages, in the item's manifest). Tracebacks of unexpected failures keep their frames (code
locations, no values) under a message redacted by :func:`oncopipe.events.redacted_error`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from oncopipe.errors import InputError
from oncopipe.events import redacted_error


def aws_error_chain(error: BaseException) -> list[tuple[str, str]]:
    """Return (code, operation) of each botocore error in ``error``'s chain, never a message.

    ``__cause__`` and ``__context__`` are followed, so an AWS error behind a wrapper
    (``S3UploadFailedError``, a stage's own error, a redacted re-raise) is found.

    Returns:
        One entry per distinct (code, operation), in the order found; empty when none.
    """
    found: list[tuple[str, str]] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if isinstance(response, Mapping):
            code = str(response.get("Error", {}).get("Code", "") or "")
            operation = str(getattr(current, "operation_name", "") or "")
            if code and (code, operation) not in found:
                found.append((code, operation))
        current = current.__cause__ or current.__context__
    return found


def aws_errors(error: BaseException) -> list[str]:
    """Return the AWS errors in ``error``'s chain, as botocore's prefix without the message.

    ``"An error occurred (AccessDenied) when calling the PutObject operation"``: the code
    and operation come from the botocore error's response, its message (which can name an
    object key) is left out.

    Returns:
        One entry per distinct (code, operation), in the order found; empty when none.
    """
    return [
        f"An error occurred ({code}) when calling the {operation} operation"
        for code, operation in aws_error_chain(error)
        if operation.isidentifier()
    ]


def failure_fields(error: BaseException, *, secret: bytes | None = None) -> dict[str, Any]:
    """Return the fields that describe a failure in a job's outcome line (no PHI).

    ``status`` (``failed``), ``error`` (the exception's class name), for an
    :class:`~oncopipe.errors.InputError` its ``reason_code`` and, with ``secret`` (the
    pseudonymisation secret), ``source_ref``, the opaque reference of the object it names;
    ``aws_errors`` (:func:`aws_errors`) when there are any.
    """
    fields: dict[str, Any] = {"status": "failed", "error": type(error).__name__}
    if isinstance(error, InputError):
        fields["reason_code"] = error.reason_code
        source = getattr(error, "source", "")
        if secret is not None and source:
            from oncopipe.pseudonym import object_ref

            fields["source_ref"] = object_ref(secret, str(source))
    found = aws_errors(error)
    if found:
        fields["aws_errors"] = found
    return fields


def log_failure(logger: logging.Logger, subject: str, error: BaseException) -> None:
    """Log that ``subject`` failed, by error type (and code), never by message.

    ``subject`` must itself be free of PHI (a step, a sample id, a run id, an opaque
    reference). An :class:`~oncopipe.errors.InputError` (bad input: a handled, expected
    outcome) gets one line with its reason code and no traceback. Any other error keeps its
    traceback's frames under the message of :func:`oncopipe.events.redacted_error`, so
    the log says where it failed, not what the message named.
    """
    name = type(error).__name__
    if isinstance(error, InputError):
        logger.error("%s failed: %s (%s)", subject, name, error.reason_code)
        return
    redacted = redacted_error(error, subject).with_traceback(error.__traceback__)
    logger.error("%s failed: %s", subject, name, exc_info=redacted)
    for entry in aws_errors(error):  # codes and operations only (the local IAM check reads them)
        logger.error("%s: %s", subject, entry)


def pick(summary: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """Return the allow-listed ``fields`` of an item summary that are present.

    An allow-list, not a deny-list: a field added to a stage's summary later (a readable
    reason, a key) stays out of the logs until an adapter names it here on purpose.
    """
    return {name: summary[name] for name in fields if name in summary}
