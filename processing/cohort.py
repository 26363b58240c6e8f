"""SageMaker Processing entry: ``python -m processing.cohort stage --build-id B``.

The model pipeline's first step: the curated feature tables (``genomics/variants/``,
``imaging/radiomics/``, ``notes/concepts/``) and labels (``cohort/labels/``, Parquet with
patient_key, response[, eligible]) -> the training dataset (patient-level splits,
presence flags, normalisation fitted on the training split) in
``cohort/dataset/<build-id>/`` (``dataset.parquet``, ``preprocess.json``) and one JSON line
per patient under ``inference/`` for the batch transform. Environment: ``CURATED_BUCKET``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

SOURCES = {
    "variants": "genomics/variants/",
    "radiomics": "imaging/radiomics/",
    "notes": "notes/concepts/",
    "labels": "cohort/labels/",
}


def build(curated: str, build_id: str, store: object, *, seed: int = 0) -> dict[str, object]:
    """Download the tables, build and upload the dataset; return counts."""
    import pyarrow.parquet as pq

    from oncopipe import layout
    from oncopipe.cohort.dataset import build_dataset_from_dir, patient_payloads, write_dataset

    with tempfile.TemporaryDirectory(prefix="oncopipe-cohort-") as tmp:
        root = Path(tmp) / "in"
        for name, prefix in SOURCES.items():
            for n, key in enumerate(k for k in store.list_keys(curated, prefix)  # type: ignore[attr-defined]
                                    if k.endswith(".parquet")):  # fmt: skip
                target = root / name / f"{n:06d}.parquet"
                target.parent.mkdir(parents=True, exist_ok=True)
                store.download_file(curated, key, str(target))  # type: ignore[attr-defined]
        dataset = build_dataset_from_dir(root, seed=seed)
        out = Path(tmp) / "out"
        written = write_dataset(dataset, out)
        tables = {name: pq.read_table(str(root / name)) for name in ("variants", "radiomics",
                                                                   "notes")
                  if (root / name).is_dir()}  # fmt: skip
        lines = []
        if len(tables) == 3:
            payloads = patient_payloads(tables["variants"], tables["radiomics"], tables["notes"])
            lines = [json.dumps(p, default=str) for p in payloads.values()]
        (out / "patients.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        # the dataset folder stays a Parquet table for Athena: "_" files are skipped, and
        # the batch-transform input lives under cohort/inference/
        prefix = f"{layout.CURATED_COHORT_DATASET}{build_id}/"
        inference = f"{layout.CURATED_COHORT_INFERENCE}{build_id}/"
        names = {"dataset.parquet": f"{prefix}dataset.parquet",
                 "preprocess.json": f"{prefix}_preprocess.json",
                 "patients.jsonl": f"{inference}patients.jsonl"}  # fmt: skip
        for path in (*written.values(), out / "patients.jsonl"):
            key = names[path.name]
            store.upload_file(str(path), curated, key,  # type: ignore[attr-defined]
                              tags={"step": "cohort", "build-id": build_id})  # fmt: skip
        return {"build_id": build_id, "patients": dataset.table.num_rows,
                "splits": dataset.counts(), "prefix": prefix}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processing.cohort",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=("stage",))
    parser.add_argument("--build-id", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from oncopipe.storage import ObjectStore, make_client

    try:
        summary = build(os.environ["CURATED_BUCKET"], args.build_id,
                        ObjectStore(make_client()), seed=args.seed)  # fmt: skip
    except Exception:  # the boundary: log, fail the job
        logging.getLogger("processing.cohort").exception("cohort %s failed", args.build_id)
        return 1
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
