"""Readers see committed outputs only: the cohort build and the local mode's tables."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oncopipe import catalog, layout
from oncopipe.cohort.columns import radiomic_feature_names
from oncopipe.cohort.synthetic import generate_tables
from oncopipe.manifest import StepContext, manifest_key, process_item, read_manifest
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

CURATED = "readers-curated"
FEATURES = [*radiomic_feature_names()[:8], "original_shape_VoxelVolume"]


def _bytes(table: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    make_bucket(s3, CURATED)
    store = ObjectStore(s3)
    tables = generate_tables(40, seed=3, features=FEATURES)
    places = {"variants": "variants", "radiomics": "radiomics", "notes": "note_concepts"}
    for name, table in places.items():
        key = f"{catalog.TABLES[table].prefix}pk-all/{name}.parquet"
        ctx = StepContext(store=store, manifest_bucket=CURATED, run_id="run-1", step=name)
        data = _bytes(getattr(tables, name))
        process_item(ctx, name, [], lambda w, key=key, data=data: w.put(CURATED, key, data) and {})
    store.put_bytes(CURATED, f"{layout.CURATED_LABELS}labels.parquet", _bytes(tables.labels),
                    tags={})  # fmt: skip
    return store


def _leftover(store: ObjectStore) -> str:
    """A killed item's Parquet in the variants prefix: a patient no commit names."""
    rows = {"patient_key": ["pk-leftoverleftover"], "sample": ["X-T"], "chrom": ["chr1"],
            "pos": [1], "ref": ["A"], "alt": ["T"], "qual": [60.0], "filter": ["PASS"],
            "depth": [50], "alt_depth": [20], "vaf": [0.4], "genotype": ["0/1"],
            "gene": ["KRAS"], "protein_change": ["G12C"], "run_id": ["run-1"]}  # fmt: skip
    key = f"{layout.CURATED_GENOMICS_VARIANTS}pk-leftoverleftover/X-T.parquet"
    store.put_bytes(CURATED, key, _bytes(pa.table(rows)), tags={})
    return key


def test_cohort_build_reads_committed_files_only_and_commits_its_dataset(
    store: ObjectStore,
) -> None:
    from oncopipe.cohort.stage import build

    leftover = _leftover(store)
    assert leftover not in catalog.committed_files(store, CURATED, "variants")
    summary = build(CURATED, "build-1", store)
    dataset_key = f"{layout.CURATED_COHORT_DATASET}build-1/dataset.parquet"
    assert catalog.committed_files(store, CURATED, "cohort_dataset") == [dataset_key]
    dataset = pq.read_table(io.BytesIO(store.get_bytes(CURATED, dataset_key)))
    assert summary["patients"] == dataset.num_rows > 0
    # what the build read is its manifest's inputs: the committed files and the labels
    document = read_manifest(store, CURATED, manifest_key("build-1", "cohort", "build-1"))
    assert document is not None and document["status"] == "committed"
    read = {i["key"] for i in document["inputs"]}
    assert leftover not in read
    assert read == {*(k for t in ("variants", "radiomics", "note_concepts")
                      for k in catalog.committed_files(store, CURATED, t)),
                    f"{layout.CURATED_LABELS}labels.parquet"}  # fmt: skip
    # the same build id on the same committed inputs is skipped: nothing rewritten
    before = store.head(CURATED, dataset_key)
    assert build(CURATED, "build-1", store) == summary
    assert store.head(CURATED, dataset_key) == before


def test_local_mode_tables_read_committed_files_only(store: ObjectStore) -> None:
    from oncopipe.local.model_demo import _curated_tables

    _leftover(store)
    tables = _curated_tables(store, CURATED)
    assert "pk-leftoverleftover" not in tables["variants"].column("patient_key").to_pylist()
    assert tables["variants"].num_rows > 0 and tables["notes"].num_rows > 0
