"""Lambda adapter: de-identify a DICOM object on write (state machine branch ``dicom``).

Event: the ingest "Object Created" event (with ``run_id`` when replayed). Result: the
item's outcome (``deidentified`` with the curated key, or ``quarantined`` with why).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.events import object_created, run_id_for
from oncopipe.imaging.stage import deidentify_object, options_from_env
from oncopipe.ingest import resolve
from oncopipe.pseudonym import load_secret
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="dicom-deid")
SETTINGS = StageSettings.from_env()
OPTIONS = options_from_env()
STORE = ObjectStore(make_client())


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    ref = object_created(event)
    run_id = run_id_for(event)
    current = resolve(STORE, ref)
    if current is None:
        raise FileNotFoundError(f"s3://{ref.bucket}/{ref.key} no longer exists")
    result = deidentify_object(STORE, SETTINGS.buckets, current, run_id,
                               secret=load_secret(), options=OPTIONS)  # fmt: skip
    logger.info("dicom", extra={"key": current.key, "status": result.summary.get("status"),
                                "patient_key": result.summary.get("patient_key")})  # fmt: skip
    return {"run_id": run_id, "key": current.key, "manifest": result.manifest_key,
            "skipped": result.status == "skipped", **dict(result.summary)}  # fmt: skip
