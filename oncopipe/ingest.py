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
from typing import Any

from oncopipe import layout
from oncopipe.errors import ConfigError, InputError, MissingPatientError, UnknownObjectError
from oncopipe.manifest import (
    ItemResult,
    ItemWriter,
    StepContext,
    StepRecord,
    process_item,
    run_manifests,
)
from oncopipe.pseudonym import object_ref
from oncopipe.quarantine import write_quarantine
from oncopipe.samplesheet import parse_samplesheet, pseudonymised_records, stage_records
from oncopipe.storage import ObjectRef, ObjectStore

logger = logging.getLogger(__name__)

STEP = layout.ROUTE_STEP
#: Bump when the routing rules change, so a re-run re-routes instead of skipping.
RULES_VERSION = 2
SNIFF_BYTES = 4096
MAX_SAMPLESHEET_BYTES = 5 * 1024 * 1024

FASTQ_SUFFIXES = (".fastq.gz", ".fq.gz")
NOTE_SUFFIXES = (".txt",)


def _check_samplesheet(key: str, lower: str, head: bytes) -> None:
    if not lower.endswith(".csv"):
        raise UnknownObjectError(key, "sample sheets must be .csv files")
    if b"\x00" in head:
        raise InputError(key, "a sample sheet must be text, this object has NUL bytes")


def _check_fastq(key: str, lower: str, head: bytes) -> None:
    if not lower.endswith(FASTQ_SUFFIXES):
        raise UnknownObjectError(key, "FASTQ files must be gzip-compressed .fastq.gz/.fq.gz")
    if not head.startswith(b"\x1f\x8b"):
        raise InputError(key, "named .fastq.gz but not gzip-compressed (no gzip magic)")


def _check_dicom(key: str, lower: str, head: bytes) -> None:
    if len(head) < 132 or head[128:132] != b"DICM":
        raise InputError(
            key, "not a DICOM Part 10 file (no 'DICM' marker after the 128-byte preamble)"
        )


def _check_note(key: str, lower: str, head: bytes) -> None:
    if not lower.endswith(NOTE_SUFFIXES):
        raise UnknownObjectError(key, "clinical notes must be UTF-8 .txt files")
    if b"\x00" in head:
        raise InputError(key, "a clinical note must be text, this object has NUL bytes")


#: What an object of each kind (:data:`oncopipe.layout.INGEST_KINDS`) must look like.
_CHECKS: dict[str, Callable[[str, str, bytes], None]] = {
    layout.KIND_SAMPLESHEET: _check_samplesheet,
    layout.KIND_FASTQ: _check_fastq,
    layout.KIND_DICOM: _check_dicom,
    layout.KIND_NOTE: _check_note,
}


def classify(key: str, head: bytes, size: int) -> str:
    """Return the kind of an ingest object from its key and first bytes.

    The kind is the one its prefix announces (:func:`oncopipe.layout.kind_from_prefix`);
    prefixes are matched exactly (lower case, as the stages' permissions are scoped to
    them), suffixes in any case.

    Raises:
        UnknownObjectError: the key is under no known prefix or has an unexpected suffix.
        InputError: the object is empty, or its content contradicts its prefix.
    """
    if size == 0:
        raise InputError(key, "the object is empty (0 bytes)")
    kind = layout.kind_from_prefix(key)
    if kind not in _CHECKS:
        raise UnknownObjectError(
            key,
            "no stage takes objects under this prefix; expected one of "
            + ", ".join(layout.INGEST_KINDS),
        )
    _CHECKS[kind](key, key.lower(), head)
    return kind


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
        """Return the current reference of an event's object (see :meth:`ObjectStore.resolve`)."""
        return self.store.resolve(ref)

    def _route_manifests(self, run_id: str) -> list[StepRecord]:
        return run_manifests(
            self.store, self.buckets.quarantine, run_id, STEP, include_retracted=True
        )

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
                if kind == layout.KIND_SAMPLESHEET:
                    summary.update(self._accept_samplesheet(writer, ref, run_id))
                else:
                    summary["status"] = "received"
                return summary
            except InputError as e:
                return {"kind": layout.kind_from_prefix(ref.key)} | write_quarantine(
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
            layout.sample_inputs_key(table_key),
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
            "sample_inputs": layout.sample_inputs_key(table_key),
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
        for sheet in sheets:
            if sheet.status == "accepted":
                for value in sheet.summary.get("referenced_keys", []):
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
        for record in sorted(routed, key=lambda r: r.item):
            if record.summary.get("kind") != layout.KIND_FASTQ or record.status != "received":
                continue
            if record.item in named:
                continue
            ref = ObjectRef(**record.inputs[0])
            error = MissingPatientError(
                ref.key,
                "no accepted sample sheet names this FASTQ file, so it has no patient",
            )

            def work(writer: ItemWriter, ref: ObjectRef = ref, error: InputError = error) -> Any:
                return {"kind": layout.KIND_FASTQ} | write_quarantine(
                    writer, self.buckets, ref, run_id, "reconcile", error
                )

            results.append(process_item(ctx, ref.key, [ref], work))
        return results


def _json_lines(records: Sequence[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode("utf-8")
