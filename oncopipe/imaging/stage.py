"""De-identification on write: an ingest DICOM object -> curated/imaging/dicom/....

One item per ingest object (step ``deid``). Its manifest is in curated and names the ingest
object by opaque reference only (:mod:`oncopipe.manifest`), so the volume job reads its
work list without any access to the PHI zone or its key; the de-identified object
lands at ``imaging/dicom/<patient_key>/<study>/<series>/<instance>.dcm`` (de-identified
UIDs), tagged with the run. Objects that cannot be released go to quarantine with why.

Every UID and patient key is validated before it becomes part of a key
(:mod:`oncopipe.imaging.uids`): no UID can add a ``/`` or ``..`` to one. In the volume
step one bad series never stops the others: a series whose files cannot be read or do
not form a volume is recorded (its manifest says ``quarantined`` with the reason, no
volume is written), a structure set that cannot be used is reported beside the volume,
and an unexpected failure of one series is reported while the rest proceed.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import asdict
from typing import Any

from oncopipe import layout
from oncopipe.errors import InputError
from oncopipe.imaging.deid import deidentify_bytes
from oncopipe.imaging.options import DeidOptions
from oncopipe.imaging.uids import InvalidUIDError, instance_path_parts, safe_key_component
from oncopipe.manifest import ItemResult, ItemWriter, StepContext, manifest_key, process_item
from oncopipe.pseudonym import is_patient_key
from oncopipe.quarantine import write_quarantine
from oncopipe.storage import ObjectRef, ObjectStore

logger = logging.getLogger(__name__)

STEP = "deid"
#: The step that converts a de-identified series into a volume (and its masks).
VOLUME_STEP = "volume"


def _patient_component(patient_key: str, source: str) -> str:
    if not is_patient_key(patient_key):
        raise InvalidUIDError(source, "the patient key is not one oncopipe made")
    return patient_key


def curated_key(patient_key: str, ds: Any, *, source: str = "dataset") -> str:
    """Return the curated key of a de-identified instance.

    Raises:
        InvalidUIDError: a UID or the patient key is not safe as a key segment.
    """
    patient, study, series, instance = instance_path_parts(patient_key, ds, source=source)
    return f"{layout.CURATED_IMAGING}dicom/{patient}/{study}/{series}/{instance}.dcm"


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
        store=store, manifest_bucket=buckets.curated, run_id=run_id, step=STEP,
        params={"profile": "PS3.15 E.1-1", "options": {k: v for k, v in asdict(options).items()}},
        key_secret=secret, tables_bucket=buckets.curated,
    )  # fmt: skip

    def work(writer: ItemWriter) -> Mapping[str, Any]:
        data = store.get_bytes(ref.bucket, ref.key, ref.version_id)
        try:
            out, key, ds = deidentify_bytes(data, source=ref.key, secret=secret, options=options)
            target_key = curated_key(key, ds, source=ref.key)
        except InputError as e:
            return {"kind": "dicom"} | write_quarantine(writer, buckets, ref, run_id, STEP, e)
        target = writer.put(buckets.curated, target_key, out, "application/dicom")
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
    """Return the curated key of a series' volume.

    Raises:
        InvalidUIDError: the series UID or the patient key is not safe as a key segment.
    """
    series = safe_key_component(series_uid, source="volume", attribute="SeriesInstanceUID")
    patient = _patient_component(patient_key, "volume")
    return f"{layout.CURATED_IMAGING_VOLUMES}{patient}/{series}.parquet"


def build_series_volumes(
    store: ObjectStore,
    buckets: layout.Buckets,
    run_id: str,
    *,
    series: Collection[str] | None = None,
) -> list[ItemResult]:
    """Convert every series de-identified in a run to a Parquet volume (step ``volume``).

    Reads the run's ``deid`` manifests, groups the de-identified instances by patient and
    series, and writes ``imaging/volumes/<patient_key>/<series>.parquet``. A series is
    converted whole: with every instance curated under its prefix, also those of earlier
    runs (a late instance reconverts the series, not a volume of itself). ``series``
    limits the step to those series UIDs (the series-settle path: :mod:`oncopipe.settle`);
    a settled series and the daily sweep then see the same inputs, so the sweep skips it.
    One series never stops another:

    - slices that do not form one volume: ``inconsistent`` with the reason;
    - a file that is not readable DICOM, or a UID unsafe in a key: ``quarantined`` with
      the reason code and reason (no volume; its DICOM stays in curated);
    - a structure set that cannot be used on the series: the volume is written and the
      structure set is listed under ``skipped_structures`` with the reason;
    - anything unexpected: a result with status ``failed`` (no manifest, so a re-run
      does it again), logged without PHI; the other series proceed.

    Returns:
        One result per series, in a stable order.
    """
    from oncopipe.manifest import run_manifests

    groups: dict[tuple[str, str], list[str]] = {}
    structures: dict[str, list[str]] = {}  # patient key -> RTSTRUCT outputs
    unreadable: list[str] = []  # one broken record must not stop the run
    for record in run_manifests(store, buckets.curated, run_id, STEP, include_retracted=True,
                                unreadable=unreadable):  # fmt: skip
        if record.status != "deidentified":
            continue
        summary = record.summary
        try:
            patient, output = str(summary["patient_key"]), str(summary["output"])
            if summary.get("modality") in ("RTSTRUCT", "SEG"):
                structures.setdefault(patient, []).append(output)
            else:
                groups.setdefault((patient, str(summary["series"])), []).append(output)
        except KeyError:
            unreadable.append(record.item)
    if unreadable:
        # counted, not named: one log line per run is enough to look
        logger.warning("%d deid manifests of run %s could not be read", len(unreadable), run_id)
    wanted = None if series is None else set(series)
    results = []
    for (patient, uid), keys in sorted(groups.items()):
        if wanted is not None and uid not in wanted:
            continue
        try:
            results.append(
                _series_volume(
                    store, buckets, run_id, patient, uid,
                    _whole_series(store, buckets, keys), structures.get(patient, []),
                )
            )  # fmt: skip
        except Exception as e:  # the per-item boundary: report, let the others proceed
            # curated objects are de-identified: the series UID and traceback carry no PHI
            logger.exception("volume of series %s failed (%s)", uid, type(e).__name__)
            results.append(
                ItemResult(
                    item=uid,
                    status="failed",
                    manifest_key=manifest_key(run_id, VOLUME_STEP, uid),
                    outputs=(),
                    summary={
                        "kind": "series",
                        "status": "failed",
                        "patient_key": patient,
                        "reason": f"unexpected {type(e).__name__}; see the job log",
                    },
                    seconds=0.0,
                )
            )
    return results


def _whole_series(store: ObjectStore, buckets: layout.Buckets, keys: list[str]) -> list[str]:
    """Return ``keys`` with every other instance curated under the same series prefix."""
    found = set(keys)
    for prefix in {k.rsplit("/", 1)[0] + "/" for k in keys}:
        found.update(k for k in store.list_keys(buckets.curated, prefix) if k.endswith(".dcm"))
    return sorted(found)


def _series_volume(
    store: ObjectStore,
    buckets: layout.Buckets,
    run_id: str,
    patient: str,
    series: str,
    keys: list[str],
    structure_keys: list[str],
) -> ItemResult:
    """Build one series' volume and masks as one item; see :func:`build_series_volumes`."""
    import tempfile
    from pathlib import Path

    from oncopipe.imaging.volume import SeriesError, series_to_parquet

    refs = [ref for k in sorted(keys) if (ref := store.head(buckets.curated, k)) is not None]
    rt_refs = [r for k in sorted(structure_keys)
               if (r := store.head(buckets.curated, k)) is not None]  # fmt: skip
    ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id,
                      step=VOLUME_STEP, params={"format": "parquet-zstd-v1"})  # fmt: skip

    def work(writer: ItemWriter) -> Mapping[str, Any]:
        with tempfile.TemporaryDirectory(prefix="oncopipe-volume-") as tmp:
            paths = []
            for n, ref in enumerate(refs):
                path = Path(tmp) / f"{n:05d}.dcm"
                store.download_file(ref.bucket, ref.key, str(path))
                paths.append(path)
            out = Path(tmp) / "volume.parquet"
            try:
                target = volume_key(patient, series)
                geometry, size = series_to_parquet(
                    paths, out, source=f"series {series}", names=[r.key for r in refs]
                )
            except SeriesError as e:
                return {"kind": "series", "status": "inconsistent", "reason": str(e)}
            except InputError as e:
                return {"kind": "series", "status": "quarantined", "patient_key": patient,
                        "reason_code": e.reason_code, "reason": str(e)}  # fmt: skip
            writer.upload_file(str(out), buckets.curated, target)
            rois, skipped = _write_structure_masks(store, writer, buckets, rt_refs, geometry,
                                                   Path(tmp), patient, series)  # fmt: skip
            return {"kind": "series", "status": "converted", "patient_key": patient,
                    "dimensions": list(geometry.dimensions), "bytes": size,
                    "dicom_bytes": sum(r.size for r in refs), "rois": rois,
                    "skipped_structures": skipped}  # fmt: skip

    return process_item(ctx, series, [*refs, *rt_refs], work)


def masks_key(patient_key: str, series_uid: str) -> str:
    """Return the curated key of a series' masks.

    Raises:
        InvalidUIDError: the series UID or the patient key is not safe as a key segment.
    """
    series = safe_key_component(series_uid, source="masks", attribute="SeriesInstanceUID")
    patient = _patient_component(patient_key, "masks")
    return f"{layout.CURATED_IMAGING}masks/{patient}/{series}.parquet"


def _write_structure_masks(
    store: ObjectStore,
    writer: ItemWriter,
    buckets: layout.Buckets,
    rt_refs: list[ObjectRef],
    geometry: Any,
    workdir: Any,
    patient: str,
    series: str,
) -> tuple[list[str], list[dict[str, str]]]:
    """Write the masks of the patient's RTSTRUCT/SEG objects on this series.

    Returns:
        The ROI names written, and the structure sets on this series that could not be
        used (object key, reason code, reason): those are skipped, the volume stands.
    """
    from oncopipe.imaging.dicom_read import read_dicom_file
    from oncopipe.imaging.masks import OtherSeriesError, rtstruct_masks, seg_masks, write_masks

    masks: dict[str, Any] = {}
    skipped: list[dict[str, str]] = []
    for ref in rt_refs:
        path = workdir / "segmentation.dcm"
        store.download_file(ref.bucket, ref.key, str(path))
        try:
            ds = read_dicom_file(path, source=ref.key)
            convert = seg_masks if str(ds.get("Modality", "")) == "SEG" else rtstruct_masks
            found = convert(ds, geometry, source=ref.key)
        except OtherSeriesError:
            continue  # another series of the patient
        except InputError as e:
            skipped.append({"object": ref.key, "reason_code": e.reason_code, "reason": str(e)})
            continue
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
    return sorted(masks), skipped
