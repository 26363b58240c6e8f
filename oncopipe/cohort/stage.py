"""The cohort step on object storage: build the training dataset, publish its features.

:func:`build` reads the committed tables of the curated zone, joins them into the model's
dataset (:mod:`oncopipe.cohort.dataset`) and commits it as one item of step ``cohort``;
:func:`publish_features` puts a committed build into the Feature Store group (opt-in). The
SageMaker Processing entry is ``processing/cohort.py``; the pipeline's ``Cohort`` step runs it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from oncopipe.storage import ObjectStore

logger = logging.getLogger(__name__)


def build(curated: str, build_id: str, store: ObjectStore, *, seed: int = 0,
          stats: dict[str, object] | None = None) -> dict[str, object]:  # fmt: skip
    """Read the committed tables, build the dataset and commit it; return counts.

    ``stats``, when given, receives the item's ``status`` (done or skipped), the
    ``input_bytes`` of the committed files read, for the adapter's metrics, and the
    build's ``manifest_key`` (for :func:`publish_features`).

    The build is one item of step ``cohort`` (run id = build id): its inputs are the
    committed files it read (:func:`oncopipe.cohort.dataset.fetch_committed_sources`), its
    outputs ``cohort/dataset/<build-id>/dataset.parquet`` (Glue table ``cohort_dataset``,
    through its symlink file), ``_preprocess.json`` and the batch-transform input; its
    manifest commits them. The same build id with the same inputs is skipped; a failed
    build leaves nothing behind.

    Raises:
        CohortError: no labels, a table lacks a required column, a committed file is gone.
    """
    import pyarrow.parquet as pq

    from oncopipe import layout
    from oncopipe.cohort.dataset import (
        build_dataset_from_dir,
        fetch_committed_sources,
        patient_payloads,
        write_dataset,
    )
    from oncopipe.manifest import ItemWriter, StepContext, process_item

    prefix = f"{layout.CURATED_COHORT_DATASET}{build_id}/"
    inference = f"{layout.CURATED_COHORT_INFERENCE}{build_id}/"
    with tempfile.TemporaryDirectory(prefix="oncopipe-cohort-") as tmp:
        root = Path(tmp) / "in"
        inputs = fetch_committed_sources(store, curated, root)
        ctx = StepContext(store=store, manifest_bucket=curated, run_id=build_id, step="cohort",
                          params={"seed": seed, "dataset": "cohort-v1"})  # fmt: skip

        def work(writer: ItemWriter) -> dict[str, object]:
            dataset = build_dataset_from_dir(root, seed=seed)
            out = Path(tmp) / "out"
            written = write_dataset(dataset, out)
            tables = {name: pq.read_table(str(root / name))
                      for name in ("variants", "radiomics", "notes")
                      if (root / name).is_dir()}  # fmt: skip
            lines = []
            if len(tables) == 3:
                payloads = patient_payloads(tables["variants"], tables["radiomics"],
                                            tables["notes"])  # fmt: skip
                lines = [json.dumps(p, default=str) for p in payloads.values()]
            (out / "patients.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
            # the dataset folder stays a Parquet table for Athena: only dataset.parquet is in
            # the table's symlink file; the batch-transform input lives under cohort/inference/
            names = {"dataset.parquet": f"{prefix}dataset.parquet",
                     "preprocess.json": f"{prefix}_preprocess.json",
                     "patients.jsonl": f"{inference}patients.jsonl"}  # fmt: skip
            for path in (*written.values(), out / "patients.jsonl"):
                writer.upload_file(str(path), curated, names[path.name])
            return {"build_id": build_id, "patients": dataset.table.num_rows,
                    "splits": dataset.counts(), "prefix": prefix}  # fmt: skip

        result = process_item(ctx, build_id, inputs, work)
    if stats is not None:
        stats.update(status=result.status, input_bytes=sum(int(i.size or 0) for i in inputs),
                     manifest_key=result.manifest_key)  # fmt: skip
    return dict(result.summary)


def publish_features(curated: str, build_id: str, store: ObjectStore, client: Any,
                     feature_group: str, *, manifest_key: str) -> int:  # fmt: skip
    """Publish a committed build's dataset to a Feature Store group; return the records put.

    Reads what the build's manifest (``manifest_key``) committed: ``dataset.parquet`` and
    ``_preprocess.json`` of ``cohort/dataset/<build-id>/``. Each patient becomes one
    record (:func:`oncopipe.cohort.feature_store.dataset_records`) whose event time is the
    manifest's ``finished_at``, the time the dataset was committed. ``client`` is a
    ``sagemaker-featurestore-runtime`` client.

    A rerun is idempotent: a finished build is skipped and keeps its manifest, so the same
    records go in again with the same record id and event time, and PutRecord upserts on
    that pair (the online store keeps one record per patient, the offline store may hold
    the same row twice; a reader deduplicates on ``patient_key``, ``event_time``). A
    rerun after a failed publish therefore completes it. A build rebuilt on new inputs
    commits a new manifest and publishes under a new, later event time.

    Raises:
        CohortError: the build has no committed manifest.
        FeatureStoreError: a record cannot be built or put (names the patient key and
            the feature, never a value).
    """
    from oncopipe import layout
    from oncopipe.cohort.dataset import CohortError, read_dataset
    from oncopipe.cohort.feature_store import dataset_records, publish
    from oncopipe.manifest import is_committed, read_manifest

    document = read_manifest(store, curated, manifest_key)
    if document is None or not is_committed(document):
        raise CohortError(f"s3://{curated}/{manifest_key}", "the build has no committed dataset")
    prefix = f"{layout.CURATED_COHORT_DATASET}{build_id}/"
    with tempfile.TemporaryDirectory(prefix="oncopipe-features-") as tmp:
        for name in ("dataset.parquet", "_preprocess.json"):
            store.download_file(curated, f"{prefix}{name}", str(Path(tmp) / name))
        dataset = read_dataset(tmp)
    records = dataset_records(dataset, when=str(document["finished_at"]), build_id=build_id)
    put = publish(client, feature_group, records)
    logger.info("cohort build %s: %d records put to feature group %s", build_id, put, feature_group)
    return put
