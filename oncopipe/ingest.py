"""The ingest router core: classify an uploaded object and route it.

What it does for one ingest object (one item of the ``route`` step):

- sample sheet: validated against the objects it names; a valid sheet becomes a
  de-identified sample table in the curated zone (pseudonymous keys, shifted dates, opaque
  references: no source id, ingest key or unshifted date) and, in the PHI zone beside the
  route manifests, the stage inputs (the same rows with their ingest keys), which the
  stages read through :func:`load_sample_inputs`; an invalid sheet is quarantined with
  every problem.
- FASTQ, DICOM, note: checked to be what its prefix says, then recorded as received;
  the stages pick them up (from the sample sheet, or their own branch).
- anything else, or a file whose content contradicts its prefix: quarantined with the
  reason. The original stays in the ingest bucket; nothing is written to curated.

Every outcome is committed by the item's manifest, so a duplicate event is a no-op.

Privacy: ingest keys name patients, so nothing here logs a key or a reason; the readable
reason goes to the quarantine zone, and the adapters report objects by
:func:`oncopipe.pseudonym.object_ref` only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from oncopipe import layout
from oncopipe.errors import ConfigError, InputError, MissingPatientError, UnknownObjectError
from oncopipe.manifest import (
    MANIFEST_ROOT,
    ItemResult,
    ItemWriter,
    StepContext,
    process_item,
)
from oncopipe.pseudonym import object_ref
from oncopipe.samplesheet import parse_samplesheet, pseudonymised_records, stage_records
from oncopipe.storage import ObjectRef, ObjectStore

logger = logging.getLogger(__name__)

STEP = "route"
#: Bump when the routing rules change, so a re-run re-routes instead of skipping.
RULES_VERSION = 2
SNIFF_BYTES = 4096
#: Python exception names of transient failures: retried before the catch-all quarantines.
TRANSIENT_ERRORS = (
    "ClientError",
    "EndpointConnectionError",
    "ReadTimeoutError",
    "ConnectionError",
)
MAX_SAMPLESHEET_BYTES = 5 * 1024 * 1024

KIND_SAMPLESHEET = "samplesheet"
KIND_FASTQ = "fastq"
KIND_DICOM = "dicom"
KIND_NOTE = "note"

FASTQ_SUFFIXES = (".fastq.gz", ".fq.gz")
NOTE_SUFFIXES = (".txt",)


def classify(key: str, head: bytes, size: int) -> str:
    """Return the kind of an ingest object from its key and first bytes.

    Prefixes are matched exactly (lower case, as the stages' permissions are scoped to
    them); suffixes in any case.

    Raises:
        UnknownObjectError: the key is under no known prefix or has an unexpected suffix.
        InputError: the object is empty, or its content contradicts its prefix.
    """
    lower = key.lower()
    if size == 0:
        raise InputError(key, "the object is empty (0 bytes)")
    if key.startswith(layout.INGEST_SAMPLESHEETS):
        if not lower.endswith(".csv"):
            raise UnknownObjectError(key, "sample sheets must be .csv files")
        if b"\x00" in head:
            raise InputError(key, "a sample sheet must be text, this object has NUL bytes")
        return KIND_SAMPLESHEET
    if key.startswith(layout.INGEST_FASTQ):
        if not lower.endswith(FASTQ_SUFFIXES):
            raise UnknownObjectError(key, "FASTQ files must be gzip-compressed .fastq.gz/.fq.gz")
        if not head.startswith(b"\x1f\x8b"):
            raise InputError(key, "named .fastq.gz but not gzip-compressed (no gzip magic)")
        return KIND_FASTQ
    if key.startswith(layout.INGEST_DICOM):
        if len(head) < 132 or head[128:132] != b"DICM":
            raise InputError(
                key,
                "not a DICOM Part 10 file (no 'DICM' marker after the 128-byte preamble)",
            )
        return KIND_DICOM
    if key.startswith(layout.INGEST_NOTES):
        if not lower.endswith(NOTE_SUFFIXES):
            raise UnknownObjectError(key, "clinical notes must be UTF-8 .txt files")
        if b"\x00" in head:
            raise InputError(key, "a clinical note must be text, this object has NUL bytes")
        return KIND_NOTE
    raise UnknownObjectError(
        key,
        "no stage takes objects under this prefix; expected one of "
        f"{layout.INGEST_SAMPLESHEETS}, {layout.INGEST_FASTQ}, {layout.INGEST_DICOM}, "
        f"{layout.INGEST_NOTES}",
    )


def kind_from_prefix(key: str) -> str:
    """Return the kind an object's prefix announces (``unknown`` under no known prefix)."""
    prefixes = {
        layout.INGEST_SAMPLESHEETS: KIND_SAMPLESHEET,
        layout.INGEST_FASTQ: KIND_FASTQ,
        layout.INGEST_DICOM: KIND_DICOM,
        layout.INGEST_NOTES: KIND_NOTE,
    }
    return next((kind for p, kind in prefixes.items() if key.startswith(p)), "unknown")


def reason_document(
    ref: ObjectRef,
    run_id: str,
    step: str,
    reason_code: str,
    message: str,
    details: Sequence[str],
) -> dict[str, Any]:
    """Return the reason document written beside a quarantined object.

    It holds the readable reason and the source object's key: PHI, which is why it lives in
    the quarantine zone only and is never logged or returned to a state machine.
    """
    return {
        "run_id": run_id,
        "step": step,
        "reason_code": reason_code,
        "message": message,
        "details": list(details),
        "source": ref.as_dict(),
        "quarantined_at": datetime.now(UTC).isoformat(),
    }


def write_quarantine(
    writer: ItemWriter,
    buckets: layout.Buckets,
    ref: ObjectRef,
    run_id: str,
    step: str,
    error: InputError,
) -> dict[str, Any]:
    """Copy a rejected object to quarantine with its reason; return the item summary.

    The summary (recorded in the item's manifest) keeps the readable ``reason`` and
    ``details``; adapters must not pass them on to logs or state outputs.
    """
    writer.reject(error.reason_code)  # the item's manifest is a tombstone (retracts outputs)
    writer.copy(ref, buckets.quarantine, layout.quarantine_key(run_id, ref.key))
    writer.put_json(
        buckets.quarantine,
        layout.quarantine_reason_key(run_id, ref.key),
        reason_document(ref, run_id, step, error.reason_code, str(error), error.details),
    )
    logger.info("quarantined an object of step %s: %s", step, error.reason_code)
    return {
        "status": "quarantined",
        "reason_code": error.reason_code,
        "reason": str(error),
        "details": list(error.details),
    }


def resolve(store: ObjectStore, ref: ObjectRef) -> ObjectRef | None:
    """Return the current reference of an event's object, or None if it is gone.

    Event keys may arrive URL-encoded (spaces as '+'); the decoded key is tried when the
    key as given does not exist. The version and ETag come from S3, not the event.
    """
    found = store.head(ref.bucket, ref.key)
    if found is None and unquote_plus(ref.key) != ref.key:
        found = store.head(ref.bucket, unquote_plus(ref.key))
    return found


def _split_s3_uri(value: str, default_bucket: str) -> tuple[str, str]:
    if value.startswith("s3://"):
        bucket, _, key = value[5:].partition("/")
        return bucket, key
    return default_bucket, value


@dataclass(frozen=True)
class Router:
    """Routes ingest objects for one deployment (buckets, store, pseudonymisation).

    ``secret`` (the pseudonymisation secret) is needed to accept a sample sheet: the curated
    table's date shift and opaque references derive from it. Without it (reconcile) a
    sample sheet raises :class:`~oncopipe.errors.ConfigError`.
    """

    store: ObjectStore
    buckets: layout.Buckets
    patient_key: Callable[[str], str]
    secret: bytes | None = None

    def resolve(self, ref: ObjectRef) -> ObjectRef | None:
        """Return the current reference of an event's object (see :func:`resolve`)."""
        return resolve(self.store, ref)

    def _route_manifests(self, run_id: str) -> list[dict[str, Any]]:
        prefix = f"{MANIFEST_ROOT}/{run_id}/{STEP}/"
        return [
            json.loads(self.store.get_bytes(self.buckets.quarantine, key))
            for key in self.store.list_keys(self.buckets.quarantine, prefix)
        ]

    def context(self, run_id: str) -> StepContext:
        return StepContext(
            store=self.store,
            manifest_bucket=self.buckets.quarantine,
            run_id=run_id,
            step=STEP,
            params={"rules_version": RULES_VERSION},
            phi_zone=True,  # route manifests name ingest keys
            tables_bucket=self.buckets.curated,  # the sample table (Glue table samples)
        )

    def route(self, ref: ObjectRef, run_id: str) -> ItemResult:
        """Route one ingest object; return the item result (its summary says the outcome).

        Input problems never raise: they end in quarantine. Infrastructure errors (S3
        unreachable, access denied) do raise, leave no manifest, and are retried.
        """

        def work(writer: ItemWriter) -> Mapping[str, Any]:
            head = self.store.get_range(
                ref.bucket, ref.key, min(SNIFF_BYTES, ref.size), ref.version_id
            )
            try:
                kind = classify(ref.key, head, ref.size)
                summary: dict[str, Any] = {"kind": kind}
                if kind == KIND_SAMPLESHEET:
                    summary.update(self._accept_samplesheet(writer, ref, run_id))
                else:
                    summary["status"] = "received"
                return summary
            except InputError as e:
                return {"kind": kind_from_prefix(ref.key)} | write_quarantine(
                    writer, self.buckets, ref, run_id, STEP, e
                )

        return process_item(self.context(run_id), ref.key, [ref], work)

    def _accept_samplesheet(
        self, writer: ItemWriter, ref: ObjectRef, run_id: str
    ) -> dict[str, Any]:
        if ref.size > MAX_SAMPLESHEET_BYTES:
            raise InputError(ref.key, f"sample sheet larger than {MAX_SAMPLESHEET_BYTES} bytes")
        if self.secret is None:
            raise ConfigError("the router needs the pseudonymisation secret to accept sheets")
        data = self.store.get_bytes(ref.bucket, ref.key, ref.version_id)
        ingest = self.buckets.ingest

        def exists(key: str) -> bool:
            return self.store.exists(ingest, key)

        def prefix_exists(key: str) -> bool:
            return self.store.prefix_exists(ingest, key.rstrip("/") + "/")

        # An invalid sheet raises SampleSheetError (an InputError): quarantined by route().
        sheet = parse_samplesheet(
            data,
            source=ref.key,
            exists=exists,
            prefix_exists=prefix_exists,
            ingest_bucket=ingest,
        )
        try:
            curated = pseudonymised_records(
                sheet, self.secret, run_id=run_id, patient_key=self.patient_key
            )
            inputs = stage_records(sheet, self.patient_key, run_id=run_id)
        except ValueError as e:  # an id the key function refuses (blank after stripping)
            raise MissingPatientError(ref.key, str(e)) from e
        # Named by the sheet's opaque reference: its key may name a patient.
        table_key = f"{layout.CURATED_SAMPLES}{run_id}/{object_ref(self.secret, ref.key)}.jsonl"
        # The stage inputs first: the curated table announces a sheet whose inputs exist.
        writer.put(
            self.buckets.quarantine,
            sample_inputs_key(table_key),
            _json_lines(inputs),
            content_type="application/x-ndjson",
        )
        out = writer.put(
            self.buckets.curated,
            table_key,
            _json_lines(curated),
            content_type="application/x-ndjson",
        )
        return {
            "status": "accepted",
            "samples": [
                {k: r[k] for k in ("sample", "type", "patient_key", "fastq_1", "fastq_2")}
                for r in inputs
            ],
            "referenced_keys": sheet.referenced_keys(),
            "sample_table": out.key,
            "sample_inputs": sample_inputs_key(table_key),
        }

    def reconcile(self, run_id: str, *, also_named_by: Sequence[str] = ()) -> list[ItemResult]:
        """Quarantine the FASTQ files of a run that no accepted sample sheet names.

        A FASTQ file carries no patient: only a sample sheet row ties it to one. Files
        still unnamed when the run's sheets are in cannot be processed; they are
        quarantined as ``no-patient`` (step ``reconcile``), so nothing is silently left
        behind. Reads the run's route manifests, so it can run any time, and again.
        """
        routed = self._route_manifests(run_id)
        sheets = list(routed)
        for other in also_named_by:  # a sheet uploaded after midnight names earlier files
            sheets += self._route_manifests(other)
        named: set[str] = set()
        for document in sheets:
            if document.get("summary", {}).get("status") == "accepted":
                for value in document["summary"].get("referenced_keys", []):
                    bucket, key = _split_s3_uri(value, self.buckets.ingest)
                    if bucket == self.buckets.ingest:
                        named.add(key)
        ctx = StepContext(
            store=self.store,
            manifest_bucket=self.buckets.quarantine,
            run_id=run_id,
            step="reconcile",
            params={"rules_version": RULES_VERSION},
            phi_zone=True,
        )
        results = []
        for document in sorted(routed, key=lambda d: str(d.get("item"))):
            summary = document.get("summary", {})
            if summary.get("kind") != KIND_FASTQ or summary.get("status") != "received":
                continue
            if document["item"] in named:
                continue
            ref = ObjectRef(**document["inputs"][0])
            error = MissingPatientError(
                ref.key,
                "no accepted sample sheet names this FASTQ file, so it has no patient",
            )

            def work(writer: ItemWriter, ref: ObjectRef = ref, error: InputError = error) -> Any:
                return {"kind": KIND_FASTQ} | write_quarantine(
                    writer, self.buckets, ref, run_id, "reconcile", error
                )

            results.append(process_item(ctx, ref.key, [ref], work))
        return results


def _json_lines(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")


def sample_inputs_key(table_key: str) -> str:
    """Return the PHI-zone key of the stage inputs that go with a curated sample table.

    ``cohort/samples/<run>/<ref>.jsonl`` (curated) -> ``_sample-inputs/<run>/<ref>.jsonl``
    (quarantine bucket): the same name, so a stage given the curated table finds them.

    Raises:
        ValueError: ``table_key`` is not a sample table key.
    """
    name = table_key.removeprefix(layout.CURATED_SAMPLES)
    if name == table_key or not name.endswith(".jsonl") or ".." in name.split("/"):
        raise ValueError(f"not a sample table key (expected {layout.CURATED_SAMPLES}...jsonl)")
    return layout.QUARANTINE_SAMPLE_INPUTS + name


def load_sample_inputs(
    store: ObjectStore, buckets: layout.Buckets, table_key: str
) -> list[dict[str, Any]]:
    """Return the stage inputs of an accepted sample sheet, given its curated table's key.

    The one reader every stage uses: rows of :func:`oncopipe.samplesheet.stage_records`
    (patient key, source patient id, sample, lane, ingest keys...), read from the PHI zone.
    They are PHI: never log them.

    Raises:
        ValueError: ``table_key`` is not a sample table key.
        InputError: the stage inputs are not there (the sheet was not accepted by this
            router version).
    """
    key = sample_inputs_key(table_key)
    if not store.exists(buckets.quarantine, key):
        raise InputError(table_key, "no stage inputs for this sample table; route the sheet again")
    text = store.get_bytes(buckets.quarantine, key).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def route_error_to_quarantine(
    store: ObjectStore,
    buckets: layout.Buckets,
    ref: ObjectRef,
    run_id: str,
    error_name: str,
    step: str = "route-failed",
) -> ItemResult:
    """Quarantine an object whose routing failed unexpectedly (the state machine's Catch).

    Only the error's type is recorded: an unexpected error's text is not known to be free
    of PHI.
    """
    error = InputError(ref.key, f"routing failed with {error_name}; see the execution history")
    error.reason_code = "processing-error"
    ctx = StepContext(store=store, manifest_bucket=buckets.quarantine, run_id=run_id, step=step,
                      phi_zone=True)  # fmt: skip
    return process_item(
        ctx,
        ref.key,
        [ref],
        lambda writer: write_quarantine(writer, buckets, ref, run_id, step, error),
    )
