"""Lambda adapter: de-identify a DICOM object on write (state machine branch ``dicom``).

Event: the ingest "Object Created" event (with ``run_id`` when replayed). Result: the
item's outcome (``deidentified`` with the curated key, or ``quarantined`` with why). The
ingest key is PHI (exports name files after patients): logs and the result name the
object by its opaque reference (:func:`oncopipe.pseudonym.object_ref`), never by key.

After a successful de-identification the instance is counted in the series-settle table
and its series' settle timer (re)started (:func:`oncopipe.settle.after_deid`), when
``SETTLE_TABLE`` and ``SETTLE_QUEUE_URL`` are set (the deployed function; the local mode's
worker tracks the series itself). EMF stage metrics (stage ``deid``) go to its log.
"""

from __future__ import annotations

import os
import time
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.events import object_created, run_id_for
from oncopipe.imaging.options import options_from_env
from oncopipe.imaging.stage import deidentify_object
from oncopipe.metrics import StageMetrics
from oncopipe.pseudonym import load_secret, object_ref
from oncopipe.settings import StageSettings
from oncopipe.settle import TABLE_ENV, SettleSettings, SettleTable, SettleTimer, after_deid
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="dicom-deid")
SETTINGS = StageSettings.from_env()
OPTIONS = options_from_env()
STORE = ObjectStore(make_client())
#: Summary fields that leave the PHI zone (the reason is rewritten without the key).
RESULT_FIELDS = ("kind", "status", "patient_key", "modality", "series", "output", "reason_code")
#: The series-settle tracker, or None where the function does not start timers.
SETTLE = SettleSettings.from_env() if os.environ.get(TABLE_ENV) else None
TABLE = SettleTable(boto3.client("dynamodb"), SETTLE.table_name) if SETTLE else None
TIMER = SettleTimer(boto3.client("sqs"), SETTLE.queue_url) if SETTLE else None


def _outcome(item_status: str, status: object) -> str:
    """Return the metrics outcome of a de-id item (a key of ``metrics.OUTCOMES``)."""
    if item_status == "skipped":
        return "skipped"
    return "quarantined" if status == "quarantined" else "succeeded"


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    secret = load_secret()
    ref = object_created(event)
    run_id = run_id_for(event)
    current = STORE.resolve(ref)
    if current is None:
        raise FileNotFoundError(f"object {object_ref(secret, ref.key)} no longer exists")
    obj = object_ref(secret, current.key)
    with StageMetrics("deid") as metrics:
        metrics.items_in()
        started = time.perf_counter()
        try:
            result = deidentify_object(STORE, SETTINGS.buckets, current, run_id,
                                       secret=secret, options=OPTIONS)  # fmt: skip
        except BaseException:
            metrics.outcome("failed", seconds=time.perf_counter() - started)
            raise
        summary = dict(result.summary)
        metrics.outcome(_outcome(result.status, summary.get("status")),
                        seconds=time.perf_counter() - started, nbytes=current.size)  # fmt: skip
    if SETTLE is not None and TABLE is not None and TIMER is not None:
        # a failure here fails the invocation: the retry (a skipped item) resends the timer
        after_deid(TABLE, TIMER, result.status, summary, time.time(), run_id=run_id,
                   settle_seconds=SETTLE.settle_seconds)  # fmt: skip
    out = {name: summary[name] for name in RESULT_FIELDS if name in summary}
    if "reason" in summary:  # "<ingest key>: why" -> "<object ref>: why"
        out["reason"] = str(summary["reason"]).replace(current.key, obj)
    logger.info("dicom", extra={"object": obj, "status": out.get("status"),
                                "reason_code": out.get("reason_code"),
                                "patient_key": out.get("patient_key")})  # fmt: skip
    return {"run_id": run_id, "object": obj, "skipped": result.status == "skipped", **out}
