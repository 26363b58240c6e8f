"""The clinical-notes steps on object storage: ingest notes -> scrubbed text and concepts.

Step ``notes`` (manifests in the quarantine bucket: its items are ingest keys, which can
hold PHI): every note routed in a run is read from the ingest zone, its patient taken from
its ``Patient-ID`` header or else from the accepted sample sheet that names it (its stage
inputs, kept by the router in the PHI zone: the curated sample table holds only
pseudonymous keys and opaque references, and the date shift is derived from the source
id, as for images). The scrubbed text and the
concepts are the only things written to curated:

- ``notes/scrubbed/<patient_key>/<note_id>.txt``
- ``notes/concepts/<patient_key>/<note_id>.parquet`` (Glue table ``note_concepts``)

A note that cannot be read (empty, binary, no patient) is quarantined with the reason; so is a
note larger than the size cap (``NOTES_MAX_BYTES`` in the environment, default 1 MB; reason
``note-too-large``), which is refused from its recorded size before it is downloaded.

Step ``note-tokens`` (manifests in curated): the model's token ids per note,
``notes/tokens/<patient_key>/<note_id>.parquet``, with the tokenizer kept in the artifacts
bucket (``tokenizers/notes/tokenizer.json``). The first run that finds no tokenizer
trains one on every scrubbed note in curated and stores it; later runs reuse it, so token
ids stay comparable between runs (retrain on purpose with ``oncopipe notes --train-tokenizer``).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from oncopipe import layout
from oncopipe.errors import ConfigError, InputError
from oncopipe.layout import KIND_NOTE, KIND_SAMPLESHEET, ROUTE_STEP
from oncopipe.manifest import (
    ItemResult,
    ItemWriter,
    StepContext,
    StepRecord,
    process_item,
    run_manifests,
)
from oncopipe.quarantine import write_quarantine
from oncopipe.stage_inputs import load_sample_inputs
from oncopipe.storage import ObjectRef, ObjectStore

log = logging.getLogger(__name__)

STEP = "notes"
TOKENS_STEP = "note-tokens"
CURATED_SCRUBBED = f"{layout.CURATED_NOTES}scrubbed/"
CURATED_CONCEPTS = f"{layout.CURATED_NOTES}concepts/"
CURATED_TOKENS = f"{layout.CURATED_NOTES}tokens/"
TOKENIZER_KEY = f"{layout.ARTIFACTS_TOKENIZERS}notes/tokenizer.json"
TOKENIZER_VOCAB = 4000


#: Environment variable holding the size cap of a note, in bytes.
MAX_BYTES_ENV = "NOTES_MAX_BYTES"
#: Largest size cap accepted (the scrubber and the NLP are linear; this bounds one item's memory).
MAX_BYTES_LIMIT = 100_000_000


def max_bytes_from_env(environ: Mapping[str, str]) -> int:
    """Return the size cap of a note from ``NOTES_MAX_BYTES`` (default 1 MB).

    Raises:
        ConfigError: the value is not a whole number between 1 and 100,000,000.
    """
    from oncopipe.notes.core import DEFAULT_MAX_NOTE_BYTES

    raw = environ.get(MAX_BYTES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_NOTE_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BYTES_LIMIT:
        raise ConfigError(
            f"{MAX_BYTES_ENV} must be a whole number of bytes between 1 and {MAX_BYTES_LIMIT}, "
            f"got {raw!r}"
        )
    return value


@dataclass(frozen=True)
class SheetNote:
    """What an accepted sample sheet says about a note (PHI: never log it)."""

    source_patient_id: str
    note_date: date | None


def sheet_notes(
    store: ObjectStore, buckets: layout.Buckets, routed: list[StepRecord]
) -> dict[str, SheetNote]:
    """Return note key -> patient and date from the run's accepted sample sheets.

    Read from the sheets' stage inputs in the PHI zone (:func:`load_sample_inputs`), where
    the router put the validated rows with their ingest keys.
    """
    found: dict[str, SheetNote] = {}
    for record in routed:
        if record.summary.get("kind") != KIND_SAMPLESHEET or record.status != "accepted":
            continue
        for row in load_sample_inputs(store, buckets, str(record.summary["sample_table"])):
            if row.get("notes"):
                raw_date = row.get("note_date")
                found[str(row["notes"])] = SheetNote(
                    str(row["source_patient_id"]),
                    date.fromisoformat(raw_date) if raw_date else None,
                )
    return found


def process_run_notes(
    store: ObjectStore,
    buckets: layout.Buckets,
    run_id: str,
    secret: bytes,
    *,
    max_bytes: int | None = None,
) -> list[ItemResult]:
    """Scrub and extract every note routed in a run (step ``notes``); return the results.

    ``max_bytes`` is the size cap of a note (default: :func:`max_bytes_from_env` of the process
    environment); a bigger note is quarantined with reason ``note-too-large``.

    Raises:
        ConfigError: ``max_bytes`` not given and ``NOTES_MAX_BYTES`` is invalid.
    """
    import os

    from oncopipe.notes.core import check_size, concept_rows, notes_schema, process_note

    cap = max_bytes_from_env(os.environ) if max_bytes is None else max_bytes
    routed = run_manifests(store, buckets.quarantine, run_id, ROUTE_STEP, include_retracted=True)
    sheets = sheet_notes(store, buckets, routed)
    ctx = StepContext(store=store, manifest_bucket=buckets.quarantine, run_id=run_id,
                      step=STEP, params={"version": "notes-v2", "max_bytes": cap}, phi_zone=True,
                      tables_bucket=buckets.curated)  # fmt: skip
    results = []
    for record in sorted(routed, key=lambda r: r.item):
        if record.summary.get("kind") != KIND_NOTE or record.status != "received":
            continue
        ref = ObjectRef(**record.inputs[0])
        from_sheet = sheets.get(ref.key)

        def work(writer: ItemWriter, ref: ObjectRef = ref,
                 from_sheet: SheetNote | None = from_sheet) -> Mapping[str, Any]:  # fmt: skip
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                check_size(ref.size, ref.key, cap)  # before downloading it
                data = store.get_bytes(ref.bucket, ref.key, ref.version_id)
                result = process_note(
                    data, ref.key, secret=secret,
                    fallback_patient_id=from_sheet.source_patient_id if from_sheet else None,
                    fallback_note_date=from_sheet.note_date if from_sheet else None,
                    max_bytes=cap,
                )  # fmt: skip
            except InputError as e:
                return {"kind": "note"} | write_quarantine(writer, buckets, ref, run_id, STEP, e)
            pk, note = result.patient_key, result.note_id
            text_key = f"{CURATED_SCRUBBED}{pk}/{note}.txt"
            writer.put(buckets.curated, text_key, result.text.encode("utf-8"),
                       content_type="text/plain; charset=utf-8")  # fmt: skip
            buffer = io.BytesIO()
            table = pa.Table.from_pylist(concept_rows(result), schema=notes_schema())
            pq.write_table(table, buffer, compression="zstd")
            parquet = "application/vnd.apache.parquet"
            writer.put(buckets.curated, f"{CURATED_CONCEPTS}{pk}/{note}.parquet",
                       buffer.getvalue(), content_type=parquet)  # fmt: skip
            return {"kind": "note", "status": "extracted", "patient_key": pk, "note_id": note,
                    "note_date": result.note_date, "scrubbed": text_key,
                    "concepts": len(result.concepts), "decode_replaced": result.decode_replaced,
                    "encoding": result.encoding,
                    "scrubbed_phi": dict(result.scrub_counts)}  # fmt: skip

        results.append(process_item(ctx, ref.key, [ref], work))
    return results


def _tokenizer(store: ObjectStore, buckets: layout.Buckets) -> tuple[Any, str]:
    """Load the stored tokenizer, or train one on every scrubbed note and store it."""
    from oncopipe.notes.tokenizer import load_tokenizer_json, tokenizer_json, train_tokenizer

    if store.exists(buckets.artifacts, TOKENIZER_KEY):
        raw = store.get_bytes(buckets.artifacts, TOKENIZER_KEY)
    else:
        texts = [store.get_bytes(buckets.curated, k).decode("utf-8")
                 for k in store.list_keys(buckets.curated, CURATED_SCRUBBED)]  # fmt: skip
        raw = tokenizer_json(train_tokenizer(texts, vocab_size=TOKENIZER_VOCAB)).encode("utf-8")
        store.client.put_object(Bucket=buckets.artifacts, Key=TOKENIZER_KEY, Body=raw,
                                ContentType="application/json")  # fmt: skip
        log.info("trained the notes tokenizer on %d scrubbed notes", len(texts))
    return load_tokenizer_json(raw.decode("utf-8")), hashlib.sha256(raw).hexdigest()[:16]


def tokenize_run_notes(
    store: ObjectStore, buckets: layout.Buckets, run_id: str
) -> list[ItemResult]:
    """Write the token ids of every note extracted in a run (step ``note-tokens``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oncopipe.notes.tokenizer import encode

    extracted = [
        record.summary
        for record in run_manifests(store, buckets.quarantine, run_id, STEP, include_retracted=True)
        if record.status == "extracted"
    ]
    if not extracted:
        return []
    tokenizer, tokenizer_hash = _tokenizer(store, buckets)
    ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id,
                      step=TOKENS_STEP, params={"tokenizer": tokenizer_hash})  # fmt: skip
    results = []
    for summary in sorted(extracted, key=lambda s: (s["patient_key"], s["note_id"])):
        ref = store.head(buckets.curated, summary["scrubbed"])
        if ref is None:
            continue

        def work(writer: ItemWriter, ref: ObjectRef = ref,
                 summary: Mapping[str, Any] = summary) -> Mapping[str, Any]:  # fmt: skip
            text = store.get_bytes(ref.bucket, ref.key, ref.version_id).decode("utf-8")
            ids = encode(tokenizer, text)
            table = pa.table({"patient_key": [summary["patient_key"]],
                              "note_id": [summary["note_id"]],
                              "token_ids": pa.array([ids], pa.list_(pa.int32())),
                              "tokenizer": [tokenizer_hash]})  # fmt: skip
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="zstd")
            writer.put(buckets.curated,
                       f"{CURATED_TOKENS}{summary['patient_key']}/{summary['note_id']}.parquet",
                       buffer.getvalue())  # fmt: skip
            return {"kind": "note", "status": "tokenized", "tokens": len(ids)}

        results.append(process_item(ctx, summary["note_id"], [ref], work))
    return results
