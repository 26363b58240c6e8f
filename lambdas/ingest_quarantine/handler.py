"""Lambda adapter for the state machine's catch-all: quarantine what failed to route.

Event: ``{"event": <the original Object Created event>, "error": {"Error", "Cause"}}``.
Only the error's type is recorded; its text is not known to be free of PHI. The result
(state output) and the log lines carry the run, the status and codes: never the object's
key (it names patients; the execution's input identifies the object, and the quarantine
zone holds the copy with its reason). This function has no pseudonymisation secret, so it
cannot name the object by an opaque reference either, and does not need to.

EMF stage metrics (stage ``ingest``): the item's end, quarantined (with its duration and
size), skipped (already quarantined, or gone) or failed. No ``ItemsIn``: the router counted
the item in when it received it.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.events import object_created, redacted_error, run_id_for
from oncopipe.metrics import StageMetrics
from oncopipe.quarantine import route_error_to_quarantine
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="ingest-quarantine")
SETTINGS = StageSettings.from_env()
STORE = ObjectStore(make_client())


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Quarantine the failed object; return run, status, reason code and error type.

    Raises:
        RedactedError: quarantining failed (under the original class name, no message).
    """
    original = event["event"]
    ref = object_created(original)
    run_id = run_id_for(original)
    error_name = str(event.get("error", {}).get("Error", "UnknownError"))[:128]
    # the router counted the item in (and its failed attempts); this records how it ended
    with StageMetrics("ingest") as metrics:
        started = time.perf_counter()
        try:
            current = STORE.resolve(ref)
            if current is None:
                logger.warning("object gone before quarantine", extra={"run_id": run_id})
                metrics.outcome("skipped", seconds=time.perf_counter() - started)
                return {"run_id": run_id, "status": "gone", "error": error_name}
            result = route_error_to_quarantine(STORE, SETTINGS.buckets, current, run_id,
                                               error_name)  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the boundary: re-raised without its message
            metrics.outcome("failed", seconds=time.perf_counter() - started)
            logger.error("quarantine failed", extra={"run_id": run_id, "error": type(e).__name__})
            raise redacted_error(e, f"the quarantine of a failed object of run {run_id}") from None
        metrics.outcome("skipped" if result.status == "skipped" else "quarantined",
                        seconds=time.perf_counter() - started, nbytes=current.size)  # fmt: skip
    logger.info("quarantined after error", extra={"run_id": run_id, "error": error_name})
    return {
        "run_id": run_id,
        "status": result.summary.get("status"),
        "reason_code": result.summary.get("reason_code"),
        "error": error_name,
        "skipped": result.status == "skipped",
    }
