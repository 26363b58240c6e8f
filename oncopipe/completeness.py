"""Which patients of a run are complete, and their prediction as soon as they are.

A patient is **complete** when every modality its accepted sample sheet names has
query-able features:

- ``genomics`` when the sheet has a tumour sample for it (variant calling runs per tumour):
  a committed ``call`` manifest;
- ``imaging`` when a row names a ``dicom`` folder: a ``radiomics`` manifest ``extracted``;
- ``notes`` when a row names a note: a ``notes`` manifest ``extracted``.

What the sheet names is read from the curated sample table (``cohort/samples/<run>/``,
its committed files only: pseudonymous keys and opaque references, no PHI); what is there
from the run's manifests (:func:`oncopipe.ops.insight.insight_from_manifests`).

For a complete patient without a prediction, :func:`predict_ready` builds the patient's
cohort row (the serving request: :func:`oncopipe.cohort.dataset.patient_payloads` of the
committed feature tables, limited to that patient), sends it to a predictor (the serving
endpoint in AWS, the local model in the local mode) and commits the answer as one item of
step ``predict`` (manifest in curated: ``cohort/predictions/<run>/<patient key>.json``).
Without a predictor (no endpoint deployed) nothing is written and the patient is reported
as ``no model deployed``. The ``TimeToInsight`` of each prediction (first ingest object ->
prediction, from the manifests' timestamps) is recorded in the ``endpoint`` stage's metrics.

Only pseudonymous keys, counts and seconds leave this module.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from oncopipe import layout
from oncopipe.catalog import committed_files
from oncopipe.layout import Buckets
from oncopipe.manifest import (
    ItemWriter,
    StepContext,
    iter_manifests,
    process_item,
    read_manifest,
)
from oncopipe.metrics import TIME_TO_INSIGHT, StageMetrics
from oncopipe.ops.insight import MODALITIES, PREDICT_STEP, PatientInsight, insight_from_manifests
from oncopipe.pseudonym import is_patient_key
from oncopipe.storage import ObjectRef, ObjectStore

log = logging.getLogger(__name__)

#: Where the committed predictions go (one JSON per patient and run).
CURATED_PREDICTIONS = "cohort/predictions/"
#: The feature tables a patient's cohort row is built from (catalog name, payload part).
FEATURE_TABLES = (("variants", "variants"), ("radiomics", "radiomics"),
                  ("note_concepts", "notes"))  # fmt: skip
#: ``predictor``: the patients' requests -> one answer (a JSON object) per request, in order.
Predictor = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@dataclass(frozen=True)
class Readiness:
    """What a patient's sample sheet names and which of it is query-able."""

    patient_key: str
    expected: frozenset[str]
    present: frozenset[str]

    @property
    def missing(self) -> list[str]:
        """Return the named modalities without features yet, in pipeline order."""
        return [m for m in MODALITIES if m in self.expected and m not in self.present]

    @property
    def complete(self) -> bool:
        """Return True when every named modality has query-able features."""
        return bool(self.expected) and not self.missing


def expected_modalities(sample_rows: Iterable[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    """Return patient key -> the modalities its sample sheet rows name.

    ``sample_rows`` are rows of the curated sample table (``patient_key``, ``type``,
    ``dicom_ref``, ``notes_ref``). A row whose patient key is not a pseudonymous key is
    ignored (never trusted as a patient).
    """
    found: dict[str, set[str]] = {}
    for row in sample_rows:
        patient = row.get("patient_key")
        if not (isinstance(patient, str) and is_patient_key(patient)):
            continue
        wanted = found.setdefault(patient, set())
        if str(row.get("type", "")).lower() in ("tumour", "tumor"):
            wanted.add("genomics")
        if row.get("dicom_ref"):
            wanted.add("imaging")
        if row.get("notes_ref"):
            wanted.add("notes")
    return {k: frozenset(v) for k, v in found.items()}


def readiness(
    expected: Mapping[str, frozenset[str]], insights: Sequence[PatientInsight]
) -> list[Readiness]:
    """Return each sheet patient's readiness (sorted by key) from its insight milestones."""
    present = {
        row.patient_key: frozenset(m for m, at in row.features_at.items() if at is not None)
        for row in insights
    }
    return [Readiness(k, v, present.get(k, frozenset())) for k, v in sorted(expected.items())]


def load_sample_rows(store: ObjectStore, curated: str, run_id: str) -> list[dict[str, Any]]:
    """Return the rows of a run's committed sample tables (curated, no PHI).

    Raises:
        CatalogError: a symlink file of the table is malformed.
    """
    prefix = f"{layout.CURATED_SAMPLES}{run_id}/"
    rows: list[dict[str, Any]] = []
    for key in committed_files(store, curated, "samples"):
        if key.startswith(prefix):
            text = store.get_bytes(curated, key).decode("utf-8")
            rows += [json.loads(line) for line in text.splitlines() if line.strip()]
    return rows


def run_readiness(
    store: ObjectStore, buckets: Buckets, run_id: str
) -> tuple[list[Readiness], list[PatientInsight]]:
    """Return the readiness of a run's sheet patients and the run's insight rows.

    Reads the curated sample table and the manifests of both zones (the notes' are in the
    PHI zone; only their patient keys and timestamps are used).
    """
    phi = list(iter_manifests(store, buckets.quarantine, run_id))
    curated = list(iter_manifests(store, buckets.curated, run_id))
    insights = insight_from_manifests(phi, curated)
    return readiness(expected_modalities(load_sample_rows(store, buckets.curated, run_id)),
                     insights), insights  # fmt: skip


def _patient_sources(
    store: ObjectStore, curated: str, patient: str
) -> tuple[dict[str, Any], list[ObjectRef]]:
    """Return the patient's rows of each committed feature table and the files read."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from oncopipe import catalog

    specs = {"variants": catalog.VARIANTS, "radiomics": catalog.RADIOMICS,
             "notes": catalog.NOTE_CONCEPTS}  # fmt: skip
    empty = {name: catalog.arrow_schema(spec) for name, spec in specs.items()}
    tables: dict[str, Any] = {}
    inputs: list[ObjectRef] = []
    for table, part in FEATURE_TABLES:
        parts = []
        for key in committed_files(store, curated, table):
            if f"/{patient}/" not in f"/{key}":  # the tables are laid out per patient key
                continue
            ref = store.head(curated, key)
            if ref is None:
                continue
            data = pq.read_table(io.BytesIO(store.get_bytes(curated, key, ref.version_id)))
            parts.append(data.filter(pc.equal(data["patient_key"], patient)))
            inputs.append(ref)
        tables[part] = (pa.concat_tables(parts, promote_options="permissive") if parts
                        else empty[part].empty_table())  # fmt: skip
    return tables, inputs


def cohort_row(store: ObjectStore, curated: str, patient: str) -> tuple[dict[str, Any], list[Any]]:
    """Return a patient's serving request (its cohort row) and the committed files it read.

    Raises:
        CatalogError: a symlink file is malformed.
    """
    from oncopipe.cohort.dataset import patient_payloads

    tables, inputs = _patient_sources(store, curated, patient)
    payloads = patient_payloads(tables["variants"], tables["radiomics"], tables["notes"],
                                keys=[patient])  # fmt: skip
    return payloads[patient], inputs


@dataclass(frozen=True)
class PatientOutcome:
    """What :func:`predict_ready` did for one sheet patient (keys and counts only)."""

    patient_key: str
    status: str  # predicted / skipped / waiting / no-model
    missing: tuple[str, ...] = ()
    time_to_insight_seconds: float | None = None


def predict_ready(
    store: ObjectStore,
    buckets: Buckets,
    run_id: str,
    predictor: Predictor | None,
    *,
    model_version: str = "",
    metrics: StageMetrics | None = None,
) -> list[PatientOutcome]:
    """Predict every complete patient of a run that has no prediction yet; return outcomes.

    Each prediction is an item of step ``predict`` (inputs: the committed feature files it
    read, params: ``model_version``): re-running with the same features and model skips it.
    ``metrics`` (default: a new ``endpoint`` stage, flushed at the end) gets one
    ``TimeToInsight`` datum per new prediction, in seconds from the patient's first ingest.

    Raises:
        Whatever the predictor or the object store raise (the item's writes are undone).
    """
    states, insights = run_readiness(store, buckets, run_id)
    first = {row.patient_key: row for row in insights}
    own = metrics is None
    stage = metrics or StageMetrics("endpoint")
    ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id,
                      step=PREDICT_STEP, params={"model_version": model_version})  # fmt: skip
    outcomes: list[PatientOutcome] = []
    try:
        for state in states:
            if not state.complete:
                outcomes.append(PatientOutcome(state.patient_key, "waiting",
                                               tuple(state.missing)))  # fmt: skip
                continue
            if predictor is None:
                outcomes.append(PatientOutcome(state.patient_key, "no-model"))
                continue
            payload, inputs = cohort_row(store, buckets.curated, state.patient_key)

            def work(writer: ItemWriter, payload: dict[str, Any] = payload,
                     patient: str = state.patient_key,
                     named: frozenset[str] = state.expected) -> Mapping[str, Any]:  # fmt: skip
                answer = predictor([payload])[0]
                writer.put_json(buckets.curated, f"{CURATED_PREDICTIONS}{run_id}/{patient}.json",
                                {"patient_key": patient, "run_id": run_id,
                                 "model_version": model_version, "prediction": answer,
                                 "predicted_at": datetime.now(UTC).isoformat()})  # fmt: skip
                return {"kind": "patient", "status": "predicted", "patient_key": patient,
                        "modalities": sorted(named)}  # fmt: skip

            with stage.timed() as timing:
                result = process_item(ctx, state.patient_key, inputs, work)
                if result.status == "skipped":
                    timing["outcome"] = "skipped"
            seconds = None
            row = first.get(state.patient_key)
            document = read_manifest(store, buckets.curated, result.manifest_key) or {}
            finished = document.get("finished_at")
            if row is not None and row.first_ingest_at is not None and finished:
                seconds = max((datetime.fromisoformat(str(finished))
                               - row.first_ingest_at).total_seconds(), 0.0)  # fmt: skip
            if seconds is not None and result.status != "skipped":
                from aws_lambda_powertools.metrics import MetricUnit

                stage.value(TIME_TO_INSIGHT, seconds, MetricUnit.Seconds)
            status = "skipped" if result.status == "skipped" else "predicted"
            outcomes.append(PatientOutcome(state.patient_key, status, (), seconds))
    finally:
        if own:
            stage.flush()
    log.info("run %s: %d patients, %d predicted", run_id, len(outcomes),
             sum(o.status == "predicted" for o in outcomes))  # fmt: skip
    return outcomes


def run_id_of(body: str) -> str | None:
    """Return the run id a queue message names, or None (a malformed message).

    Two shapes: ``{"run_id": ...}`` (sent by a state machine's task) and an EventBridge
    ``Step Functions Execution Status Change`` event, whose execution input names the run
    (``detail.input``, a JSON string). Nothing else of the message is read.
    """
    from oncopipe.runs import validate_run_id

    try:
        document = json.loads(body)
        if isinstance(document, dict) and isinstance(document.get("detail"), dict):
            document = json.loads(document["detail"].get("input") or "{}")
        candidate = document.get("run_id") if isinstance(document, dict) else None
        return validate_run_id(str(candidate)) if candidate else None
    except (ValueError, TypeError, AttributeError):
        return None


def group_by_run(records: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[str]], list[str]]:
    """Return the SQS records' message ids grouped by run id, and the unreadable ones' ids.

    A batch gathered over the batching window usually names one run many times: each run
    is then handled once for the whole batch.
    """
    runs: dict[str, list[str]] = {}
    bad: list[str] = []
    for record in records:
        message_id = str(record.get("messageId", ""))
        run_id = run_id_of(str(record.get("body", "")))
        if run_id is None:
            bad.append(message_id)
        else:
            runs.setdefault(run_id, []).append(message_id)
    return runs, bad


class EndpointPredictor:
    """The serving endpoint as a :data:`Predictor` (``sagemaker-runtime:InvokeEndpoint``)."""

    def __init__(self, runtime: Any, endpoint_name: str) -> None:
        self._runtime = runtime
        self.endpoint_name = endpoint_name

    def __call__(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Return the endpoint's answer for each payload, in order.

        Raises:
            botocore errors of the call (the item is then undone and retried by SQS).
        """
        answers = []
        for payload in payloads:
            response = self._runtime.invoke_endpoint(
                EndpointName=self.endpoint_name, ContentType="application/json",
                Accept="application/json", Body=json.dumps(payload, default=str),
            )  # fmt: skip
            answer = json.loads(response["Body"].read())
            answers.append(answer[0] if isinstance(answer, list) else answer)
        return answers
