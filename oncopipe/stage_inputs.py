"""The stage inputs of an accepted sample sheet: what the genomics and notes stages work from.

The router writes them to the PHI zone beside its route manifests (rows of
:func:`oncopipe.samplesheet.stage_records`: patient key, source patient id, sample, lane,
ingest keys), named like the curated sample table they go with
(:func:`oncopipe.layout.sample_inputs_key`).
"""

from __future__ import annotations

import json
from typing import Any

from oncopipe import layout
from oncopipe.errors import InputError
from oncopipe.storage import ObjectStore


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
    key = layout.sample_inputs_key(table_key)
    if not store.exists(buckets.quarantine, key):
        raise InputError(table_key, "no stage inputs for this sample table; route the sheet again")
    text = store.get_bytes(buckets.quarantine, key).decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
