"""Time to insight per patient, measured from the manifests' timestamps.

For each pseudonymous patient key of a run:

- **first ingest**: the earliest ``started_at`` of the route manifests (PHI zone, step
  ``route``) of the patient's ingest objects: the FASTQ files and the sample sheet that
  names them (the accepted sheet's route summary lists them per patient), the DICOM
  objects (``deid`` manifests tie an input to a patient key) and the notes (``notes``
  manifests). The route manifest starts within seconds of the S3 event, so this is the
  arrival to within the router's queueing delay. An object without a route manifest
  counts from its stage manifest's ``started_at``.
- **features query-able, per modality**: the latest ``finished_at`` of the committed
  manifests whose outputs make that modality's table for the patient: ``call`` (variants
  Parquet), ``radiomics`` with status ``extracted``, ``notes`` with status ``extracted``. A
  manifest commits its table's symlink file, so from then on Athena sees the rows.
- **prediction**: the ``finished_at`` of a committed ``predict`` manifest for the patient
  key, when the run has one; otherwise ``prediction_note`` says there is no deployed model.

Only pseudonymous keys leave this module: the PHI-zone manifests are read to link objects
to keys and never quoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from oncopipe.layout import Buckets
from oncopipe.manifest import iter_manifests
from oncopipe.pseudonym import is_patient_key

MODALITIES = ("genomics", "imaging", "notes")
ROUTE_STEP = "route"
PREDICT_STEP = "predict"
#: Step and summary status whose committed manifest makes a modality's features query-able.
FEATURE_STEPS: Mapping[str, tuple[str, str | None]] = {
    "genomics": ("call", None),
    "imaging": ("radiomics", "extracted"),
    "notes": ("notes", "extracted"),
}
METRIC_TIME_TO_INSIGHT = "TimeToInsight"
NO_MODEL = "no model deployed"
_PATIENT_IN_KEY = re.compile(r"(?:^|/)(pk-[a-z2-7]{16})(?:/|$)")


@dataclass(frozen=True)
class PatientInsight:
    """The milestones of one patient in a run (UTC datetimes; None: not reached)."""

    patient_key: str
    first_ingest_at: datetime | None
    features_at: Mapping[str, datetime | None] = field(default_factory=dict)
    prediction_at: datetime | None = None
    prediction_note: str = ""

    def seconds_to(self, moment: datetime | None) -> float | None:
        """Return the seconds from the first ingest to ``moment`` (None if either is unknown)."""
        if moment is None or self.first_ingest_at is None:
            return None
        return (moment - self.first_ingest_at).total_seconds()

    @property
    def all_features_at(self) -> datetime | None:
        """Return when the last of the patient's modalities became query-able."""
        found = [t for t in self.features_at.values() if t is not None]
        return max(found) if found else None

    @property
    def time_to_insight_seconds(self) -> float | None:
        """Return first ingest -> prediction in seconds (None without a prediction)."""
        return self.seconds_to(self.prediction_at)


def _at(document: Mapping[str, Any], key: str) -> datetime | None:
    value = document.get(key)
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def _input_keys(document: Mapping[str, Any]) -> list[str]:
    # a curated manifest names other zones' objects by opaque reference (``ref``): such an
    # input is linked to its patient with the manifest's own start as its arrival
    return [str(i.get("key") or i["ref"]) for i in document.get("inputs", [])
            if i.get("key") or i.get("ref")]  # fmt: skip


def _patient_of(document: Mapping[str, Any]) -> str | None:
    summary = document.get("summary") or {}
    candidate = summary.get("patient_key")
    if isinstance(candidate, str) and is_patient_key(candidate):
        return candidate
    for output in document.get("outputs", []):  # e.g. genomics/variants/<patient key>/...
        found = _PATIENT_IN_KEY.search(str(output.get("key", "")))
        if found:
            return found.group(1)
    return None


def insight_from_manifests(
    phi_manifests: Iterable[Mapping[str, Any]],
    curated_manifests: Iterable[Mapping[str, Any]],
    *,
    model_deployed: bool | None = None,
) -> list[PatientInsight]:
    """Return one row per patient key from a run's committed manifests (pure function).

    ``phi_manifests``: the quarantine bucket's (route, notes); ``curated_manifests``:
    the curated bucket's. ``model_deployed`` only words the note of a missing prediction.

    Returns:
        Rows sorted by patient key; a patient appears once any manifest names its key.
    """
    phi = list(phi_manifests)
    curated = list(curated_manifests)
    route_started: dict[str, datetime] = {}
    patient_objects: dict[str, dict[str, datetime | None]] = {}

    def link(patient: str, key: str, fallback: datetime | None) -> None:
        seen = patient_objects.setdefault(patient, {})
        seen[key] = seen.get(key) or fallback

    for document in [*phi, *curated]:  # de-id manifests are in curated (opaque inputs)
        step = document.get("step")
        started = _at(document, "started_at")
        if step == ROUTE_STEP:
            for key in _input_keys(document):
                if started is not None:
                    route_started[key] = min(route_started.get(key, started), started)
            summary = document.get("summary") or {}
            for sample in summary.get("samples") or []:
                patient = sample.get("patient_key")
                if not (isinstance(patient, str) and is_patient_key(patient)):
                    continue
                for key in [*_input_keys(document), sample.get("fastq_1"), sample.get("fastq_2")]:
                    if key:
                        link(patient, str(key), None)
        elif step in ("deid", "notes"):
            patient = _patient_of(document)
            if patient:
                for key in _input_keys(document):
                    link(patient, key, started)

    features: dict[str, dict[str, datetime]] = {}
    predictions: dict[str, datetime] = {}
    for document in [*phi, *curated]:
        step, status = document.get("step"), (document.get("summary") or {}).get("status")
        finished = _at(document, "finished_at")
        patient = _patient_of(document)
        if patient is None or finished is None:
            continue
        if step == PREDICT_STEP:
            predictions[patient] = max(predictions.get(patient, finished), finished)
            continue
        for modality, (feature_step, wanted) in FEATURE_STEPS.items():
            if step == feature_step and (wanted is None or status == wanted):
                done = features.setdefault(patient, {})
                done[modality] = max(done.get(modality, finished), finished)

    note = "" if model_deployed else NO_MODEL
    rows = []
    for patient in sorted(set(patient_objects) | set(features) | set(predictions)):
        arrivals = [route_started.get(key) or fallback
                    for key, fallback in patient_objects.get(patient, {}).items()]  # fmt: skip
        known = [a for a in arrivals if a is not None]
        done = features.get(patient, {})
        rows.append(PatientInsight(
            patient_key=patient,
            first_ingest_at=min(known) if known else None,
            features_at={m: done.get(m) for m in MODALITIES},
            prediction_at=predictions.get(patient),
            prediction_note="" if patient in predictions else (note or "no prediction yet"),
        ))  # fmt: skip
    return rows


def time_to_insight(store: Any, buckets: Buckets, run_id: str) -> list[PatientInsight]:
    """Return the time-to-insight rows of a run, read from both manifest zones.

    Raises:
        Whatever the object store raises (access denied: the caller needs read access to
        the manifests of the quarantine and curated buckets).
    """
    phi = iter_manifests(store, buckets.quarantine, run_id)
    curated = list(iter_manifests(store, buckets.curated, run_id))
    deployed = any(d.get("step") == PREDICT_STEP for d in curated)
    return insight_from_manifests(phi, curated, model_deployed=deployed)


def insight_metrics(rows: Sequence[PatientInsight]) -> list[dict[str, Any]]:
    """Return the ``TimeToInsight`` CloudWatch data (seconds) of a run's patients.

    One datum per patient and milestone reached: dimension ``Milestone`` is a modality
    (features query-able), ``all-features`` or ``prediction``. No patient dimension: a
    metric per patient would be a billed custom metric each, and the key is not needed
    to watch the distribution.
    """
    data: list[dict[str, Any]] = []
    for row in rows:
        milestones: list[tuple[str, datetime | None]] = [
            *((m, row.features_at.get(m)) for m in MODALITIES),
            ("all-features", row.all_features_at),
            ("prediction", row.prediction_at),
        ]
        for milestone, moment in milestones:
            seconds = row.seconds_to(moment)
            if seconds is None:
                continue
            data.append({
                "MetricName": METRIC_TIME_TO_INSIGHT,
                "Dimensions": [{"Name": "Milestone", "Value": milestone}],
                "Value": max(seconds, 0.0),
                "Unit": "Seconds",
            })  # fmt: skip
    return data
