"""Lambda adapter of the daily reconcile: FASTQ files no sample sheet named -> quarantine.

Event: the EventBridge schedule's event (its ``time`` decides the run: the previous UTC
day's ``ingest-YYYYMMDD``), or ``{"run_id": ...}`` to reconcile one run by hand. Sheets
routed on the day after also count, so an upload that crossed midnight is not orphaned.
The result and the log hold counts, never the quarantined files' keys (they name patients).
EMF stage metrics (stage ``ingest``: the orphaned files in, quarantined or skipped) go to
the log; their dimensions are the environment and stage only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.ingest import Router
from oncopipe.manifest import ItemResult
from oncopipe.metrics import StageMetrics
from oncopipe.runs import daily_run_id, validate_run_id
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = Logger(service="ingest-reconcile")
SETTINGS = StageSettings.from_env()
STORE = ObjectStore(make_client())


def runs_for(event: dict[str, Any]) -> tuple[str, list[str]]:
    """Return (the run to reconcile, the runs whose sheets may also name its files)."""
    if event.get("run_id"):
        return validate_run_id(str(event["run_id"])), []
    moment = datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))
    return daily_run_id(moment - timedelta(days=1)), [daily_run_id(moment)]


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    run_id, later = runs_for(event)
    # Reconcile reads manifests only; patient keys are never needed, so no secret.
    router = Router(store=STORE, buckets=SETTINGS.buckets, patient_key=_no_patient_key)
    with StageMetrics("ingest") as metrics:
        started = time.perf_counter()
        try:
            results = router.reconcile(run_id, also_named_by=later)
        except BaseException:
            metrics.outcome("failed", seconds=time.perf_counter() - started)
            raise
        record_outcomes(metrics, results)
    # Items are ingest keys (PHI): the result and the log carry counts only; the
    # quarantine zone lists the files with their reason.
    quarantined = sum(1 for r in results if r.summary.get("status") == "quarantined")
    logger.info("reconciled", extra={"run_id": run_id, "quarantined": quarantined})
    return {"run_id": run_id, "checked": len(results), "quarantined": quarantined}


def record_outcomes(metrics: StageMetrics, results: Sequence[ItemResult]) -> None:
    """Record the orphaned files found (``ItemsIn``) and each one's outcome: quarantined
    now (with its duration), or skipped (quarantined by an earlier reconcile)."""
    metrics.items_in(len(results))
    for result in results:
        if result.status == "skipped":
            metrics.outcome("skipped")
        elif result.summary.get("status") == "quarantined":
            metrics.outcome("quarantined", seconds=result.seconds)
        else:
            metrics.outcome("succeeded", seconds=result.seconds)


def _no_patient_key(source_patient_id: str) -> str:
    raise RuntimeError("reconcile does not pseudonymise")
