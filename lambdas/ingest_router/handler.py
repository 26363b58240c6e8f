"""Lambda adapter of the ingest router: first task of the ingest state machine.

Event: the EventBridge "Object Created" event of the ingest bucket, as the rule delivers
it to the state machine (plus an optional ``run_id``). Result: the route step's summary,
on which the state machine branches (``status``: accepted / received / quarantined).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.events import object_created, run_id_for
from oncopipe.ingest import Router
from oncopipe.pseudonym import keyer, load_secret
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="ingest-router")
SETTINGS = StageSettings.from_env()  # fails at cold start when misconfigured
STORE = ObjectStore(make_client())


class ObjectGoneError(Exception):
    """The object of the event no longer exists (deleted before routing)."""


@logger.inject_lambda_context(log_event=False)  # the event holds object keys only, still: no
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    ref = object_created(event)
    run_id = run_id_for(event)
    router = Router(store=STORE, buckets=SETTINGS.buckets, patient_key=keyer(load_secret()))
    current = router.resolve(ref)
    if current is None:
        raise ObjectGoneError(f"s3://{ref.bucket}/{ref.key} no longer exists")
    result = router.route(current, run_id)
    logger.info(
        "routed",
        extra={
            "key": current.key,
            "run_id": run_id,
            "status": result.summary.get("status"),
            "kind": result.summary.get("kind"),
            "skipped": result.status == "skipped",
        },
    )
    # Step Functions payloads are limited to 256 KB: the per-sample lists stay in the
    # manifest and the sample table; the state machine gets counts and where to look.
    summary = {k: v for k, v in result.summary.items() if k not in ("samples", "referenced_keys")}
    if "samples" in result.summary:
        samples = result.summary["samples"]
        summary["sample_count"] = len(samples)
        # ids only (no patient data): the state machine maps the genomics jobs over them
        # a sample with several lanes has several rows: one job per sample
        summary["sample_ids"] = list(dict.fromkeys(s["sample"] for s in samples))
        summary["tumour_ids"] = list(
            dict.fromkeys(s["sample"] for s in samples if s["type"] == "tumour")
        )
    return {
        "run_id": run_id,
        "bucket": current.bucket,
        "key": current.key,
        "manifest": result.manifest_key,
        "skipped": result.status == "skipped",
        **summary,
    }
