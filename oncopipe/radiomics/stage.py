"""The radiomics step on object storage: a run's volumes and masks -> feature tables.

Reads the run's ``volume`` manifests in curated, takes every converted series that has
masks, and writes ``imaging/radiomics/<patient_key>/<series>.parquet`` (step
``radiomics``, one manifest per series; a finished series is skipped on a rerun). A
series whose ROIs PyRadiomics refuses is recorded as ``no-features`` with the reason; a
series without masks is not an item (nothing to extract).

Series run in parallel in ``workers`` processes; each process opens its own S3 client
from the standard AWS configuration (``AWS_ENDPOINT_URL`` in the local mode).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oncopipe import layout
from oncopipe.manifest import ItemResult, ItemWriter, StepContext, process_item, run_manifests
from oncopipe.storage import ObjectRef, ObjectStore

log = logging.getLogger(__name__)

STEP = "radiomics"


def features_key(patient_key: str, series_uid: str) -> str:
    return f"{layout.CURATED_IMAGING_RADIOMICS}{patient_key}/{series_uid}.parquet"


@dataclass(frozen=True)
class SeriesItem:
    patient_key: str
    series: str
    volume_key: str
    masks_key: str


def pending_series(store: ObjectStore, buckets: layout.Buckets, run_id: str) -> list[SeriesItem]:
    """Return the run's converted series that have masks (from the ``volume`` manifests)."""
    from oncopipe.imaging.stage import VOLUME_STEP, masks_key, volume_key

    items = []
    for record in run_manifests(store, buckets.curated, run_id, VOLUME_STEP,
                                include_retracted=True):  # fmt: skip
        if record.status != "converted" or not record.summary.get("rois"):
            continue
        patient, series = record.summary["patient_key"], record.item
        items.append(SeriesItem(patient, series, volume_key(patient, series),
                                masks_key(patient, series)))  # fmt: skip
    return sorted(items, key=lambda i: (i.patient_key, i.series))


def extract_item(
    store: ObjectStore,
    buckets: layout.Buckets,
    run_id: str,
    item: SeriesItem,
    params_path: str | None = None,
) -> ItemResult:
    """Extract one series' features (one ``radiomics`` item with its manifest)."""
    import tempfile

    from oncopipe.radiomics.core import RadiomicsError, extract_series, load_params, write_features

    params = load_params(params_path)
    refs = [
        store.head(buckets.curated, item.volume_key),
        store.head(buckets.curated, item.masks_key),
    ]
    inputs: list[ObjectRef] = [r for r in refs if r is not None]
    ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id, step=STEP,
                      params={"params_hash": params.hash})  # fmt: skip

    def work(writer: ItemWriter) -> Mapping[str, Any]:
        if len(inputs) != 2:
            return {"kind": "series", "status": "no-features", "reason_code": "inputs-missing",
                    "reason": "volume or masks missing"}  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="oncopipe-radiomics-") as tmp:
            volume, masks = Path(tmp) / "volume.parquet", Path(tmp) / "masks.parquet"
            store.download_file(buckets.curated, item.volume_key, str(volume))
            store.download_file(buckets.curated, item.masks_key, str(masks))
            try:
                result = extract_series(volume, masks, params, patient_key=item.patient_key,
                                        run_id=run_id)  # fmt: skip
            except RadiomicsError as e:
                # the readable reason stays in the manifest; adapters print the code
                return {"kind": "series", "status": "no-features",
                        "reason_code": e.reason_code, "reason": str(e)}  # fmt: skip
            out = Path(tmp) / "features.parquet"
            write_features(result.rows, out)
            writer.upload_file(
                str(out), buckets.curated, features_key(item.patient_key, item.series)
            )
        return {"kind": "series", "status": "extracted", "patient_key": item.patient_key,
                "rois": result.rois, "features": result.feature_count,
                "skipped_rois": result.skipped}  # fmt: skip

    return process_item(ctx, item.series, inputs, work)


def _extract_in_child(
    item: SeriesItem, *, buckets: layout.Buckets, run_id: str, params_path: str | None
) -> ItemResult:
    from oncopipe.storage import make_client

    return extract_item(ObjectStore(make_client()), buckets, run_id, item, params_path)


def build_series_features(
    store: ObjectStore,
    buckets: layout.Buckets,
    run_id: str,
    *,
    params_path: str | None = None,
    workers: int = 1,
    series: Collection[str] | None = None,
) -> list[ItemResult]:
    """Extract the features of every series of a run that has masks; return the results.

    ``series`` limits the step to those series UIDs (the series-settle path). With
    ``workers`` > 1 series run in that many processes, each with its own S3 client from
    the environment (``store`` is then used only to list the items).
    """
    items = pending_series(store, buckets, run_id)
    if series is not None:
        wanted = set(series)
        items = [item for item in items if item.series in wanted]
    if workers <= 1 or len(items) <= 1:
        return [extract_item(store, buckets, run_id, item, params_path) for item in items]
    from functools import partial

    from oncopipe.radiomics.core import in_processes

    work = partial(_extract_in_child, buckets=buckets, run_id=run_id, params_path=params_path)
    return [result for _, result in in_processes(work, items, workers)]
