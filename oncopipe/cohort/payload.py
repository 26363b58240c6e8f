"""One patient's features as the serving contract's JSON (``training/inference.py``).

Used for the batch-transform input the cohort step writes and by ``oncopipe predict
--from-curated``: the same raw features the stages write, grouped by patient.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

VARIANT_FIELDS = ("gene", "protein_change", "vaf", "filter")
NOTE_FIELDS = ("note_id", "concept", "value", "numeric_value", "negated", "certainty",
               "temporality", "experiencer", "start", "end")  # fmt: skip


def patient_payloads(variants: Any, radiomics: Any, notes: Any) -> dict[str, dict[str, Any]]:
    """Return patient key -> request payload from the three feature tables (pyarrow).

    Radiomics: the largest ROI (``original_shape_VoxelVolume``) of the patient, as the
    cohort dataset chooses it.
    """
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for row in variants.to_pylist():
        out[row["patient_key"]].setdefault("variants", []).append(
            {k: row.get(k) for k in VARIANT_FIELDS})  # fmt: skip
    rois: dict[str, dict[tuple[str, str], dict[str, float]]] = defaultdict(dict)
    for row in radiomics.select(
        ["patient_key", "series_key", "roi", "feature", "value"]
    ).to_pylist():
        rois[row["patient_key"]].setdefault((row["series_key"], row["roi"]), {})[
            row["feature"]] = row["value"]  # fmt: skip
    for key, by_roi in rois.items():
        out[key]["radiomics"] = max(
            by_roi.values(), key=lambda f: f.get("original_shape_VoxelVolume") or 0.0
        )
    for row in notes.to_pylist():
        out[row["patient_key"]].setdefault("notes", []).append(
            {k: row.get(k) for k in NOTE_FIELDS if k in row})  # fmt: skip
    return {key: {"patient_key": key, **value} for key, value in sorted(out.items())}
