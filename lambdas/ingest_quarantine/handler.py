"""Lambda adapter for the state machine's catch-all: quarantine what failed to route.

Event: ``{"event": <the original Object Created event>, "error": {"Error", "Cause"}}``.
Only the error's type is recorded; its text is not known to be free of PHI.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.events import object_created, run_id_for
from oncopipe.ingest import resolve, route_error_to_quarantine
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="ingest-quarantine")
SETTINGS = StageSettings.from_env()
STORE = ObjectStore(make_client())


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    original = event["event"]
    ref = object_created(original)
    run_id = run_id_for(original)
    error_name = str(event.get("error", {}).get("Error", "UnknownError"))[:128]
    current = resolve(STORE, ref)
    if current is None:
        logger.warning("object gone before quarantine", extra={"key": ref.key})
        return {"run_id": run_id, "key": ref.key, "status": "gone", "error": error_name}
    result = route_error_to_quarantine(STORE, SETTINGS.buckets, current, run_id, error_name)
    logger.info("quarantined after error", extra={"key": ref.key, "error": error_name})
    return {
        "run_id": run_id,
        "key": ref.key,
        "manifest": result.manifest_key,
        **result.summary,
    }
