"""The unified patient vector in SageMaker Feature Store: feature definitions and records.

With ``lifecycle.feature_store`` on, the cohort step publishes each patient's model
inputs to the feature group ``<prefix>-patient-inputs``
(:class:`stacks.components.feature_store.PatientFeatureStore`). This module is the one
source of that group's schema and of its records, so the template (synth time) and the
records (run time) cannot drift apart. It imports nothing from AWS; the publisher takes a
``sagemaker-featurestore-runtime`` client.

What one patient's record holds (:func:`feature_definitions`, in this order):

* ``patient_key`` (String): the record identifier, the pseudonymous key.
* ``event_time`` (String, ISO-8601 UTC with ``Z``): when the cohort build committed (its
  manifest's ``finished_at``), so a rerun of a finished build writes the same
  (record id, event time) again: PutRecord is an upsert on that pair.
* ``build_id`` (String): the cohort build, whose ``_preprocess.json`` fitted the
  normalisation and vocabularies the values below depend on.
* ``split`` (String): the build's train/validation/test split of the patient, so a
  training set read from the offline store keeps the build's partition.
* ``has_genomics``, ``has_radiomics``, ``has_notes`` (Integral 0/1): the presence flags
  the model reads (Feature Store has no boolean type).
* ``variant_genes``, ``variant_alterations``, ``variant_vafs``, ``note_tokens``,
  ``note_numeric``, ``note_flags`` (String holding a JSON list): the model's
  variable-length token inputs, one list each, in the dataset's order (variants by VAF,
  mentions by note and offset). Feature Store's list types exist only for the in-memory
  online tier, and a list can be empty, so JSON text in a String feature it is.
* one Fractional feature per radiomic feature of ``radiomic_features.json`` (the 1,316
  PyRadiomics v1 names; each at most 61 characters, unchanged), z-scored as in
  ``radiomic_values``. A patient without radiomics has none of them in the record.

Left out on purpose: the labels ``response`` and ``eligible`` (outcomes, not inputs: an
online lookup at serving time must not be able to return the outcome next to the inputs,
and labels are uploaded on their own clock; training joins them from the cohort table or
``cohort/labels/``), and the provenance columns the model does not read
(``radiomic_series``, ``radiomic_roi``, ``note_ids``, ``note_starts``, ``note_ends``).

Feature Store requires a record to leave out a feature without a value: None and NaN
(and infinities) are omitted, never sent as text.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any

from oncopipe.cohort.columns import RADIOMIC_FEATURES_FILE, radiomic_feature_names
from oncopipe.errors import OncopipeError

log = logging.getLogger(__name__)

#: The radiomic feature list the model's radiomic values follow (PyRadiomics v1).

INTEGRAL, FRACTIONAL, STRING = "Integral", "Fractional", "String"
RECORD_IDENTIFIER = "patient_key"
EVENT_TIME = "event_time"
#: The feature group is ``<prefix>-`` + this; its offline store's Glue table is
#: :data:`GLUE_TABLE` in the curated database.
GROUP_SUFFIX = "patient-inputs"
GLUE_TABLE = "patient_inputs"
#: Feature Store's limits: feature and group names, features per group, a value's length.
NAME_RE = re.compile(r"^[a-zA-Z0-9]([-_]*[a-zA-Z0-9]){0,63}$")
MAX_NAME_LENGTH = 64
MAX_FEATURES = 2500
MAX_VALUE_LENGTH = 358_400
#: Names Feature Store adds to the offline store's table itself.
RESERVED_NAMES = frozenset({"is_deleted", "write_time", "api_invocation_time"})
#: The errors a PutRecord is retried on: throttling and the service's "try again".
TRANSIENT_CODES = frozenset(
    {"ThrottlingException", "Throttling", "ServiceUnavailable", "InternalFailure"}
)


class FeatureStoreError(OncopipeError):
    """A cohort row cannot be published; the message names the patient key and feature.

    Attributes:
        patient_key: the pseudonymous key of the record.
        features: the features concerned (names, never values); empty when unknown.
        code: the AWS error code behind it, or "" for a problem found before sending.
    """

    def __init__(
        self, patient_key: str, problem: str, *, features: Sequence[str] = (), code: str = ""
    ) -> None:
        self.patient_key = patient_key
        self.features = tuple(features)
        self.code = code
        where = f" (feature {', '.join(self.features)})" if self.features else ""
        super().__init__(f"patient {patient_key}{where}: {problem}")

    def fields(self) -> dict[str, Any]:
        """Return what a job's outcome line may say about it: key, features, code."""
        out: dict[str, Any] = {"patient_key": self.patient_key, "features": list(self.features)}
        if self.code:
            out["aws_code"] = self.code
        return out


@dataclass(frozen=True)
class FeatureDefinition:
    """One feature of the group: its name, Feature Store type and dataset column."""

    name: str
    type: str
    column: str

    def cfn(self) -> dict[str, str]:
        """Return it as a ``FeatureDefinitions`` entry (CloudFormation and the API)."""
        return {"FeatureName": self.name, "FeatureType": self.type}


#: The model's other inputs, by dataset column: the presence flags (Integral 0/1) and the
#: variable-length lists (JSON text in a String).
FLAG_COLUMNS = ("has_genomics", "has_radiomics", "has_notes")
LIST_COLUMNS = ("variant_genes", "variant_alterations", "variant_vafs",
                "note_tokens", "note_numeric", "note_flags")  # fmt: skip


@cache
def feature_definitions() -> tuple[FeatureDefinition, ...]:
    """Return the feature group's features, in a fixed order (see the module docstring).

    Raises:
        ValueError: a name Feature Store refuses (pattern, length, reserved, a duplicate
            once lower-cased as Glue does) or more than :data:`MAX_FEATURES` features.
    """
    features = [
        FeatureDefinition(RECORD_IDENTIFIER, STRING, "patient_key"),
        FeatureDefinition(EVENT_TIME, STRING, ""),
        FeatureDefinition("build_id", STRING, ""),
        FeatureDefinition("split", STRING, "split"),
        *(FeatureDefinition(c, INTEGRAL, c) for c in FLAG_COLUMNS),
        *(FeatureDefinition(c, STRING, c) for c in LIST_COLUMNS),
        *(FeatureDefinition(n, FRACTIONAL, "radiomic_values") for n in radiomic_feature_names()),
    ]
    check_names([f.name for f in features])
    return tuple(features)


def check_names(names: Sequence[str]) -> None:
    """Raise ValueError unless every name is a valid, distinct Feature Store feature name."""
    if len(names) > MAX_FEATURES:
        raise ValueError(f"{len(names)} features; a feature group holds at most {MAX_FEATURES}")
    seen: dict[str, str] = {}
    for name in names:
        if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
            raise ValueError(
                f"feature name {name!r}: Feature Store needs {NAME_RE.pattern}, "
                f"at most {MAX_NAME_LENGTH} characters"
            )
        if name.lower() in RESERVED_NAMES:
            raise ValueError(f"feature name {name!r} is reserved by Feature Store")
        if name.lower() in seen:  # the offline store's Glue columns are lower case
            raise ValueError(f"feature names {seen[name.lower()]!r} and {name!r} collide")
        seen[name.lower()] = name


def feature_group_name(prefix: str) -> str:
    """Return the feature group's name, ``<prefix>-patient-inputs``.

    Raises:
        ValueError: the name is not a valid feature group name (pattern, 64 characters).
    """
    name = f"{prefix}-{GROUP_SUFFIX}"
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise ValueError(
            f"feature group name {name!r}: needs {NAME_RE.pattern} and at most "
            f"{MAX_NAME_LENGTH} characters (shorten the project or environment name)"
        )
    return name


def event_time(when: datetime | str) -> str:
    """Return ``when`` as Feature Store's String event time: ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    ``when`` is a timezone-aware datetime or its ISO-8601 text (a manifest's
    ``finished_at``); a naive one is taken as UTC.
    """
    moment = datetime.fromisoformat(when) if isinstance(when, str) else when
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class PatientRecord:
    """One PutRecord's ``Record``: ``[{"FeatureName", "ValueAsString"}, ...]``."""

    patient_key: str
    record: tuple[dict[str, str], ...]

    def values(self) -> dict[str, str]:
        """Return the record as feature name -> value text."""
        return {f["FeatureName"]: f["ValueAsString"] for f in self.record}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _text(key: str, feature: FeatureDefinition, value: Any) -> str | None:
    """Return the value text of one feature, or None to leave it out."""
    text: str | None
    try:
        if feature.type == INTEGRAL:
            return None if value is None else str(int(value))
        if feature.type == FRACTIONAL:
            x = _finite(value)
            return None if x is None else repr(x)
        if isinstance(value, list | tuple):
            # NaN is not JSON: a non-finite number in a list becomes null
            items = [_finite(v) if isinstance(v, float) else v for v in value]
            text = json.dumps(items, separators=(",", ":"), allow_nan=False)
        else:
            text = None if value is None else str(value)
    except (TypeError, ValueError):
        # from None: the conversion's message would quote the value
        raise FeatureStoreError(
            key, f"not a {feature.type} value", features=[feature.name]
        ) from None
    if text is not None and len(text) > MAX_VALUE_LENGTH:
        raise FeatureStoreError(
            key, f"{len(text)} characters, more than Feature Store's {MAX_VALUE_LENGTH}",
            features=[feature.name],
        )  # fmt: skip
    return text


def iter_patient_records(
    rows: Iterable[Mapping[str, Any]],
    radiomic_features: Sequence[str],
    *,
    when: datetime | str,
    build_id: str,
) -> Iterator[PatientRecord]:
    """Yield one record per cohort row (``dataset.parquet`` rows as dicts), in row order.

    ``radiomic_features`` is the order of ``radiomic_values`` (the dataset's
    ``Preprocessing.radiomic_features``); a name the feature group does not define (a
    feature outside ``radiomic_features.json``) is left out of every record, with a
    warning naming how many. ``when`` is the event time (the build's commit time).

    Raises:
        FeatureStoreError: a row without ``patient_key``, a value that is not of its
            feature's type, a value longer than Feature Store takes, or
            ``radiomic_values`` of another length than ``radiomic_features``.
    """
    definitions = feature_definitions()
    defined = {f.name for f in definitions if f.column == "radiomic_values"}
    radiomic = [(i, n) for i, n in enumerate(radiomic_features) if n in defined]
    unknown = len(radiomic_features) - len(radiomic)
    if unknown:
        log.warning(
            "%d radiomic feature(s) of the dataset are not in %s and are not published",
            unknown, RADIOMIC_FEATURES_FILE.name,
        )  # fmt: skip
    by_name = {f.name: f for f in definitions}
    columns = [
        f
        for f in definitions
        if f.column and f.column != "radiomic_values" and f.name != RECORD_IDENTIFIER
    ]
    stamp = event_time(when)
    for row in rows:
        key = row.get("patient_key")
        if not key:
            raise FeatureStoreError("<none>", "a cohort row has no patient_key")
        key = str(key)
        values: dict[str, Any] = {RECORD_IDENTIFIER: key, EVENT_TIME: stamp, "build_id": build_id}
        for f in columns:
            values[f.name] = row.get(f.column)
        rad = row.get("radiomic_values") or []
        if rad:
            if len(rad) != len(radiomic_features):
                raise FeatureStoreError(
                    key, f"{len(rad)} radiomic values, the preprocessing has "
                    f"{len(radiomic_features)} features", features=["radiomic_values"],
                )  # fmt: skip
            for i, name in radiomic:
                values[name] = rad[i]
        record = []
        for name, value in values.items():
            text = _text(key, by_name[name], value)
            if text is not None:
                record.append({"FeatureName": name, "ValueAsString": text})
        yield PatientRecord(key, tuple(record))


def dataset_records(
    dataset: Any, *, when: datetime | str, build_id: str, batch_rows: int = 256
) -> Iterator[PatientRecord]:
    """Yield the records of a :class:`~oncopipe.cohort.dataset.CohortDataset`, in row order.

    Rows are read ``batch_rows`` at a time, so a large cohort is never all in Python
    objects at once (a record is ~1,300 features).

    Raises:
        FeatureStoreError: as :func:`iter_patient_records`.
    """
    rows = (row for batch in dataset.table.to_batches(max_chunksize=batch_rows)
            for row in batch.to_pylist())  # fmt: skip
    return iter_patient_records(
        rows, dataset.preprocessing.radiomic_features, when=when, build_id=build_id
    )


_NAME_TOKEN = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_]*")


def _named_features(message: str, record: PatientRecord) -> list[str]:
    """The record's feature names an AWS error message mentions (the message is dropped)."""
    names = {f["FeatureName"] for f in record.record}
    return sorted({t for t in _NAME_TOKEN.findall(message) if t in names} - {RECORD_IDENTIFIER})


def _without_message(error: Any, code: str) -> Exception:
    """The AWS error again with its code and operation but not its message, which can
    quote a value; the boundary (:func:`oncopipe.boundary.aws_errors`) reads the code."""
    from botocore.exceptions import ClientError

    return ClientError(
        {"Error": {"Code": code, "Message": "withheld"}},
        str(getattr(error, "operation_name", "") or "PutRecord"),
    )


def publish(
    client: Any,
    feature_group: str,
    records: Iterable[PatientRecord],
    *,
    max_attempts: int = 6,
    base_delay_s: float = 0.2,
    max_delay_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Put each record into ``feature_group``; return how many were put.

    ``client`` is a ``sagemaker-featurestore-runtime`` client. A PutRecord that fails
    with a transient error (:data:`TRANSIENT_CODES`: throttling, service unavailable) is
    retried up to ``max_attempts`` attempts in all, with exponential backoff and full
    jitter, capped at ``max_delay_s``. Records go in order, so a failure leaves the earlier
    ones put; putting them again is harmless (same record id and event time).

    Raises:
        FeatureStoreError: a PutRecord failed for good (a non-transient error, or
            ``max_attempts`` transient ones); it names the patient key, the features the
            error mentions and the AWS error code, never a value nor the AWS message.
        ValueError: ``max_attempts`` < 1.
    """
    from botocore.exceptions import ClientError

    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    put = 0
    for item in records:
        for attempt in range(1, max_attempts + 1):
            try:
                client.put_record(FeatureGroupName=feature_group, Record=list(item.record))
                break
            except ClientError as e:
                error = e.response.get("Error", {})
                code = str(error.get("Code", "") or "")
                if code in TRANSIENT_CODES and attempt < max_attempts:
                    sleep(random.uniform(0, min(max_delay_s, base_delay_s * 2 ** (attempt - 1))))
                    continue
                message = str(error.get("Message", "") or "")
                gave_up = f" after {attempt} attempts" if code in TRANSIENT_CODES else ""
                raise FeatureStoreError(
                    item.patient_key,
                    f"PutRecord to feature group {feature_group} failed ({code}){gave_up}",
                    features=_named_features(message, item),
                    code=code,
                ) from _without_message(e, code)
        put += 1
    return put
