"""Lambda adapter: de-identify a DICOM object on write (state machine branch ``dicom``).

Event: the ingest "Object Created" event (with ``run_id`` when replayed). Result: the
item's outcome (``deidentified`` with the curated key, or ``quarantined`` with why). The
ingest key is PHI (exports name files after patients): logs and the result name the
object by its opaque reference (:func:`oncopipe.pseudonym.object_ref`), never by key.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.events import object_created, run_id_for
from oncopipe.imaging.stage import deidentify_object, options_from_env
from oncopipe.ingest import resolve
from oncopipe.pseudonym import load_secret, object_ref
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="dicom-deid")
SETTINGS = StageSettings.from_env()
OPTIONS = options_from_env()
STORE = ObjectStore(make_client())
#: Summary fields that leave the PHI zone (the reason is rewritten without the key).
RESULT_FIELDS = ("kind", "status", "patient_key", "modality", "series", "output", "reason_code")


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    secret = load_secret()
    ref = object_created(event)
    run_id = run_id_for(event)
    current = resolve(STORE, ref)
    if current is None:
        raise FileNotFoundError(f"object {object_ref(secret, ref.key)} no longer exists")
    obj = object_ref(secret, current.key)
    result = deidentify_object(STORE, SETTINGS.buckets, current, run_id,
                               secret=secret, options=OPTIONS)  # fmt: skip
    summary = dict(result.summary)
    out = {name: summary[name] for name in RESULT_FIELDS if name in summary}
    if "reason" in summary:  # "<ingest key>: why" -> "<object ref>: why"
        out["reason"] = str(summary["reason"]).replace(current.key, obj)
    logger.info("dicom", extra={"object": obj, "status": out.get("status"),
                                "reason_code": out.get("reason_code"),
                                "patient_key": out.get("patient_key")})  # fmt: skip
    return {"run_id": run_id, "object": obj, "skipped": result.status == "skipped", **out}
