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
