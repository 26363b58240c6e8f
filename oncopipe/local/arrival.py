"""The local mode's event-driven paths: notes on arrival, patients predicted when complete.

In AWS (``stacks/components/notes_on_arrival.py``, ``stacks/components/patient_ready.py``):

- the ingest state machine sends each routed note's run to the notes queue; the notes
  function gathers them for at most ``ops.notes_batch_seconds`` and starts one notes
  processing job per run, which processes that run's notes not processed yet (a note done
  before is skipped by its manifest), so notes are query-able minutes after they arrive;
- when a features flow of a run succeeds, the patient-ready function builds the cohort row
  of every patient whose sample sheet's modalities are all query-able and, when a serving
  endpoint is deployed, records its prediction (:mod:`oncopipe.completeness`).

Here the worker calls the same commands at the same moments: :func:`notes_on_arrival`
after each batch of uploads was routed, :func:`patients_ready` after each stage finished.
The predictor is the local model of ``oncopipe local model`` (its pruned model folder), when
one was trained; otherwise the patients are reported as ``no-model``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from oncopipe.completeness import PatientOutcome, Predictor, predict_ready
from oncopipe.local.state import LocalState, home
from oncopipe.local.worker import JobResult, run_notes_job

log = logging.getLogger(__name__)

#: The stage (role) of the patient-ready function in the local state.
PATIENT_READY_STAGE = "patient_ready"
#: The JobResult step of a notes job started on arrival (the daily sweep is ``notes``).
ARRIVAL_STEP = "notes-arrival"


def notes_on_arrival(state: LocalState, run_id: str) -> JobResult:
    """Run the notes job for a run's notes routed so far (as the notes function would).

    Returns the job's result, its step :data:`ARRIVAL_STEP`; each note line's
    ``item_status`` is ``done`` for a note processed now, ``skipped`` for one done before.
    """
    done = run_notes_job(state, run_id)
    return JobResult(ARRIVAL_STEP, done.sample, done.exit_code, done.outcome)


def processed_now(result: JobResult) -> int:
    """Return how many notes a notes job processed itself (not skipped)."""
    return sum(1 for line in result.outcome.get("notes", []) if line.get("item_status") == "done")


def local_model_dir() -> Path:
    """Return where ``oncopipe local model`` keeps the pruned (served) model."""
    return home() / "model" / "pruned"


def local_predictor(model_dir: Path | None = None) -> tuple[Predictor | None, str]:
    """Return the local serving path and its version, or (None, "") without a model."""
    folder = model_dir or local_model_dir()
    if not ((folder / "model.pt").is_file() and (folder / "preprocess.json").is_file()):
        return None, ""
    from training.inference import predict_local

    def predict(payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answer = predict_local(folder, payloads)
        return answer if isinstance(answer, list) else [answer]

    import hashlib

    digest = hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()[:16]
    return predict, f"local-{digest}"


def patients_ready(
    state: LocalState,
    run_id: str,
    *,
    predictor: Predictor | None = None,
    model_version: str = "",
    find_model: Callable[[], tuple[Predictor | None, str]] = local_predictor,
) -> list[PatientOutcome]:
    """Predict the run's complete patients, as the patient-ready function's role.

    ``predictor`` defaults to the local model (:func:`local_predictor`), if one was trained.

    Raises:
        Whatever :func:`oncopipe.completeness.predict_ready` raises (access denied: the
        role lacks a grant the function needs).
    """
    import boto3

    from oncopipe.metrics import StageMetrics
    from oncopipe.storage import ObjectStore

    if predictor is None:
        predictor, model_version = find_model()
    stage = PATIENT_READY_STAGE if PATIENT_READY_STAGE in state.stage_roles else None
    kwargs = state.stage_client_kwargs(stage) if stage else state.client_kwargs()
    store = ObjectStore(boto3.client("s3", **kwargs))  # type: ignore[call-overload]
    # The EMF documents (TimeToInsight) go to the local metrics log, not the terminal:
    # in the account the Lambda runtime sends them to CloudWatch.
    log_path = metrics_log()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as stream:
        metrics = StageMetrics("endpoint", environment="local", stream=stream)
        outcomes = predict_ready(store, state.buckets, run_id, predictor,
                                 model_version=model_version, metrics=metrics)  # fmt: skip
        metrics.flush()
    return outcomes


def metrics_log() -> Path:
    """Return the local mode's EMF log (one JSON document a line, what CloudWatch would get)."""
    return home() / "metrics.emf.jsonl"
