"""De-identification on write: an ingest DICOM object -> curated/imaging/dicom/....

One item per ingest object (step ``deid``). The manifest names the ingest key, so it stays
in the PHI zone (quarantine bucket) like the routing manifests; the de-identified object
lands at ``imaging/dicom/<patient_key>/<study>/<series>/<instance>.dcm`` (de-identified
UIDs), tagged with the run. Objects that cannot be released go to quarantine with why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from oncopipe import layout
from oncopipe.errors import ConfigError, InputError
from oncopipe.imaging.deid import DeidOptions, deidentify_bytes
from oncopipe.ingest import write_quarantine
from oncopipe.manifest import ItemResult, ItemWriter, StepContext, process_item
from oncopipe.storage import ObjectRef, ObjectStore

STEP = "deid"
OPTIONS_ENV = "DEID_OPTIONS"


def options_from_env(environ: Mapping[str, str] | None = None) -> DeidOptions:
    """Return the profile options of a deployment (``DEID_OPTIONS``, JSON), else defaults.

    Raises:
        ConfigError: not JSON, or an unknown option.
    """
    env = os.environ if environ is None else environ
    raw = env.get(OPTIONS_ENV)
    if not raw:
        return DeidOptions()
    try:
        values = json.loads(raw)
        flags: dict[str, Any] = {str(k): bool(v) for k, v in values.items()}
        return DeidOptions(**flags)
    except (json.JSONDecodeError, TypeError, AttributeError) as e:
        allowed = ", ".join(f for f in asdict(DeidOptions()) if f != "safe_private")
        raise ConfigError(f"{OPTIONS_ENV} must be a JSON object of: {allowed}") from e


def curated_key(patient_key: str, ds: Any) -> str:
    return (
        f"{layout.CURATED_IMAGING}dicom/{patient_key}/{ds.StudyInstanceUID}/"
        f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    )


def deidentify_object(
    store: ObjectStore,
    buckets: layout.Buckets,
    ref: ObjectRef,
    run_id: str,
    *,
    secret: bytes,
    options: DeidOptions | None = None,
) -> ItemResult:
    """De-identify one ingest DICOM object; return the item result (its summary: outcome)."""
    options = options or DeidOptions()
    ctx = StepContext(
        store=store, manifest_bucket=buckets.quarantine, run_id=run_id, step=STEP,
        params={"profile": "PS3.15 E.1-1", "options": {k: v for k, v in asdict(options).items()}},
    )  # fmt: skip

    def work(writer: ItemWriter) -> Mapping[str, Any]:
        data = store.get_bytes(ref.bucket, ref.key, ref.version_id)
        try:
            out, key, ds = deidentify_bytes(data, source=ref.key, secret=secret, options=options)
        except InputError as e:
            return {"kind": "dicom"} | write_quarantine(writer, buckets, ref, run_id, STEP, e)
        target = writer.put(buckets.curated, curated_key(key, ds), out, "application/dicom")
        return {
            "kind": "dicom",
            "status": "deidentified",
            "patient_key": key,
            "modality": str(ds.get("Modality", "")),
            "series": str(ds.SeriesInstanceUID),
            "output": target.key,
        }

    return process_item(ctx, ref.key, [ref], work)


def volume_key(patient_key: str, series_uid: str) -> str:
    return f"{layout.CURATED_IMAGING_VOLUMES}{patient_key}/{series_uid}.parquet"


def build_series_volumes(
    store: ObjectStore, buckets: layout.Buckets, run_id: str
) -> list[ItemResult]:
    """Convert every series de-identified in a run to a Parquet volume (step ``volume``).

    Reads the run's ``deid`` manifests, groups the de-identified instances by patient and
    series, and writes ``imaging/volumes/<patient_key>/<series>.parquet``. A series whose
    slices do not form one volume is recorded as ``inconsistent`` with the reason (its
    DICOM stays in curated); the other series are unaffected.
    """
    import tempfile
    from pathlib import Path

    from oncopipe.imaging.volume import SeriesError, series_to_parquet
    from oncopipe.manifest import MANIFEST_ROOT

    groups: dict[tuple[str, str], list[str]] = {}
    structures: dict[str, list[str]] = {}  # patient key -> RTSTRUCT outputs
    prefix = f"{MANIFEST_ROOT}/{run_id}/{STEP}/"
    for key in store.list_keys(buckets.quarantine, prefix):
        summary = json.loads(store.get_bytes(buckets.quarantine, key)).get("summary", {})
        if summary.get("status") != "deidentified":
            continue
        if summary.get("modality") in ("RTSTRUCT", "SEG"):
            structures.setdefault(summary["patient_key"], []).append(summary["output"])
        else:
            groups.setdefault((summary["patient_key"], summary["series"]), []).append(
                summary["output"]
            )
    results = []
    for (patient, series), keys in sorted(groups.items()):
        refs = [ref for k in sorted(keys) if (ref := store.head(buckets.curated, k)) is not None]
        rt_refs = [r for k in sorted(structures.get(patient, []))
                   if (r := store.head(buckets.curated, k)) is not None]  # fmt: skip
        ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id,
                          step="volume", params={"format": "parquet-zstd-v1"})  # fmt: skip

        def work(
            writer: ItemWriter,
            refs: list[ObjectRef] = refs,
            patient: str = patient,
            series: str = series,
            rt_refs: list[ObjectRef] = rt_refs,
        ) -> Mapping[str, Any]:
            with tempfile.TemporaryDirectory(prefix="oncopipe-volume-") as tmp:
                paths = []
                for n, ref in enumerate(refs):
                    path = Path(tmp) / f"{n:05d}.dcm"
                    store.download_file(ref.bucket, ref.key, str(path))
                    paths.append(path)
                out = Path(tmp) / "volume.parquet"
                try:
                    geometry, size = series_to_parquet(paths, out)
                except SeriesError as e:
                    return {"kind": "series", "status": "inconsistent", "reason": str(e)}
                writer.upload_file(str(out), buckets.curated, volume_key(patient, series))
                rois = _write_structure_masks(store, writer, buckets, rt_refs, geometry,
                                              Path(tmp), patient, series)  # fmt: skip
                return {"kind": "series", "status": "converted", "patient_key": patient,
                        "dimensions": list(geometry.dimensions), "bytes": size,
                        "dicom_bytes": sum(r.size for r in refs), "rois": rois}  # fmt: skip

        results.append(process_item(ctx, series, [*refs, *rt_refs], work))
    return results


def masks_key(patient_key: str, series_uid: str) -> str:
    return f"{layout.CURATED_IMAGING}masks/{patient_key}/{series_uid}.parquet"


def _write_structure_masks(
    store: ObjectStore,
    writer: ItemWriter,
    buckets: layout.Buckets,
    rt_refs: list[ObjectRef],
    geometry: Any,
    workdir: Any,
    patient: str,
    series: str,
) -> list[str]:
    """Write the masks of the patient's RTSTRUCT/SEG objects on this series; return ROIs."""
    import pydicom

    from oncopipe.imaging.masks import OtherSeriesError, rtstruct_masks, seg_masks, write_masks

    masks: dict[str, Any] = {}
    for ref in rt_refs:
        path = workdir / "segmentation.dcm"
        store.download_file(ref.bucket, ref.key, str(path))
        ds = pydicom.dcmread(str(path))
        convert = seg_masks if str(ds.get("Modality", "")) == "SEG" else rtstruct_masks
        try:
            found = convert(ds, geometry, source=ref.key)
        except OtherSeriesError:
            continue  # another series of the patient; other errors fail the item
        for name, mask in found.items():
            # ROI names are emptied by the profile: never let one object's "ROI 1"
            # overwrite another's
            unique, n = name, 2
            while unique in masks:
                unique, n = f"{name} ({n})", n + 1
            masks[unique] = mask
    if masks:
        out = workdir / "masks.parquet"
        write_masks(masks, geometry, out)
        writer.upload_file(str(out), buckets.curated, masks_key(patient, series))
    return sorted(masks)
