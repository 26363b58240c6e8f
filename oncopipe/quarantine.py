"""Quarantine: a rejected object is copied to the quarantine zone with a reason document.

Every stage that refuses an input calls :func:`write_quarantine` inside its item's work (so the
copy, the reason and the item's tombstone manifest commit together); the state machine's catch
calls :func:`route_error_to_quarantine`. The reason document names the source object (PHI): it
lives in the quarantine zone only and is never logged or returned to a state machine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from oncopipe import layout
from oncopipe.errors import InputError
from oncopipe.manifest import ItemResult, ItemWriter, StepContext, process_item
from oncopipe.storage import ObjectRef, ObjectStore

logger = logging.getLogger(__name__)


def reason_document(
    ref: ObjectRef,
    run_id: str,
    step: str,
    reason_code: str,
    message: str,
    details: Sequence[str],
) -> dict[str, Any]:
    """Return the reason document written beside a quarantined object.

    It holds the readable reason and the source object's key: PHI, which is why it lives in
    the quarantine zone only and is never logged or returned to a state machine.
    """
    return {
        "run_id": run_id,
        "step": step,
        "reason_code": reason_code,
        "message": message,
        "details": list(details),
        "source": ref.as_dict(),
        "quarantined_at": datetime.now(UTC).isoformat(),
    }


def write_quarantine(
    writer: ItemWriter,
    buckets: layout.Buckets,
    ref: ObjectRef,
    run_id: str,
    step: str,
    error: InputError,
) -> dict[str, Any]:
    """Copy a rejected object to quarantine with its reason; return the item summary.

    The summary (recorded in the item's manifest) keeps the readable ``reason`` and
    ``details``; adapters must not pass them on to logs or state outputs.
    """
    writer.reject(error.reason_code)  # the item's manifest is a tombstone (retracts outputs)
    writer.copy(ref, buckets.quarantine, layout.quarantine_key(run_id, ref.key))
    writer.put_json(
        buckets.quarantine,
        layout.quarantine_reason_key(run_id, ref.key),
        reason_document(ref, run_id, step, error.reason_code, str(error), error.details),
    )
    logger.info("quarantined an object of step %s: %s", step, error.reason_code)
    return {
        "status": "quarantined",
        "reason_code": error.reason_code,
        "reason": str(error),
        "details": list(error.details),
    }


def route_error_to_quarantine(
    store: ObjectStore,
    buckets: layout.Buckets,
    ref: ObjectRef,
    run_id: str,
    error_name: str,
    step: str = "route-failed",
) -> ItemResult:
    """Quarantine an object whose routing failed unexpectedly (the state machine's Catch).

    Only the error's type is recorded: an unexpected error's text is not known to be free
    of PHI.
    """
    error = InputError(ref.key, f"routing failed with {error_name}; see the execution history")
    error.reason_code = "processing-error"
    ctx = StepContext(store=store, manifest_bucket=buckets.quarantine, run_id=run_id, step=step,
                      phi_zone=True)  # fmt: skip
    return process_item(
        ctx,
        ref.key,
        [ref],
        lambda writer: write_quarantine(writer, buckets, ref, run_id, step, error),
    )
