"""Lambda adapter of the ingest router: first task of the ingest state machine.

Event: the EventBridge "Object Created" event of the ingest bucket, as the rule delivers
it to the state machine (plus an optional ``run_id``). Result: the route step's outcome,
on which the state machine branches (``status``: accepted / received / quarantined).

The result is Step Functions state output and the log lines go to CloudWatch, so neither
holds an object key, a reason or a detail (keys name patients): the object is named by
its opaque reference (:func:`oncopipe.pseudonym.object_ref`), outcomes by codes and
counts. The readable reason is in the quarantine zone, beside the quarantined copy.

Each invocation also writes the ``ingest`` stage's EMF metrics (:mod:`oncopipe.metrics`):
one item in, and succeeded / quarantined / skipped / failed with its duration.
"""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.events import object_created, redacted_error, run_id_for
from oncopipe.ingest import Router
from oncopipe.metrics import StageMetrics
from oncopipe.ops.cost import sample_key
from oncopipe.pseudonym import keyer, load_secret, object_ref
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="ingest-router")
SETTINGS = StageSettings.from_env()  # fails at cold start when misconfigured
STORE = ObjectStore(make_client())

#: Summary fields that may leave the function: codes, counts, ids of the curated zone.
#: Anything else a summary holds (reason, details, samples, keys) stays in the manifest.
RESULT_FIELDS = ("kind", "status", "reason_code", "sample_table")


class ObjectGoneError(Exception):
    """The object of the event no longer exists (deleted before routing)."""


@logger.inject_lambda_context(log_event=False)  # the event holds an object key: PHI
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Route the event's object; return its outcome (no key, no reason: see the module).

    Raises:
        ObjectGoneError: the object was deleted before routing.
        RedactedError: any other failure, under the original error's class name (the state
            machine retries and catches on it) and without its message.
    """
    metrics = StageMetrics("ingest")
    metrics.items_in()
    started = time.perf_counter()
    outcome_name = "failed"
    try:
        result = _route(event)
        outcome_name = (
            "skipped" if result["skipped"]
            else "quarantined" if result.get("status") == "quarantined"
            else "succeeded"
        )  # fmt: skip
        return result
    finally:
        metrics.outcome(outcome_name, seconds=time.perf_counter() - started)
        metrics.flush()


def _route(event: dict[str, Any]) -> dict[str, Any]:
    secret = load_secret()
    ref = object_created(event)
    obj = object_ref(secret, ref.key)
    run_id = run_id_for(event)
    try:
        router = Router(
            store=STORE, buckets=SETTINGS.buckets, patient_key=keyer(secret), secret=secret
        )
        current = router.resolve(ref)
        if current is None:
            raise ObjectGoneError(f"object {obj} no longer exists in the ingest bucket")
        result = router.route(current, run_id)
    except ObjectGoneError:
        logger.warning("object gone before routing", extra={"object": obj, "run_id": run_id})
        raise
    except Exception as e:  # noqa: BLE001 - the boundary: re-raised without its message
        logger.error(
            "routing failed", extra={"object": obj, "run_id": run_id, "error": type(e).__name__}
        )
        raise redacted_error(e, obj) from None
    outcome = {k: result.summary[k] for k in RESULT_FIELDS if k in result.summary}
    if "samples" in result.summary:
        samples = result.summary["samples"]
        outcome["sample_count"] = len(samples)
        # ids only (no patient data, checked at the sheet): the state machine maps the
        # genomics jobs over them; a sample with several lanes has several rows: one job each
        outcome["sample_ids"] = list(dict.fromkeys(s["sample"] for s in samples))
        outcome["tumour_ids"] = list(
            dict.fromkeys(s["sample"] for s in samples if s["type"] == "tumour")
        )
        # what the genomics state machine maps over: each id with its pseudonymous key, the
        # jobs' cost-allocation tag (a tag is readable by whoever reads the bill)
        outcome["sample_tags"] = [{"sample": s, "tag": sample_key(secret, s)}
                              for s in outcome["sample_ids"]]  # fmt: skip
        outcome["tumour_tags"] = [{"sample": s, "tag": sample_key(secret, s)}
                              for s in outcome["tumour_ids"]]  # fmt: skip
    logger.info(
        "routed",
        extra={
            "object": obj,
            "run_id": run_id,
            "status": outcome.get("status"),
            "kind": outcome.get("kind"),
            "reason_code": outcome.get("reason_code"),
            "skipped": result.status == "skipped",
        },
    )
    return {
        "run_id": run_id,
        "object": obj,
        "skipped": result.status == "skipped",
        **outcome,
    }
