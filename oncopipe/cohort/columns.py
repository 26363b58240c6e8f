"""Columns of the cohort dataset (``dataset.parquet``), for the Glue catalog.

Kept apart from :mod:`oncopipe.cohort.dataset` so the catalog can name them without
importing pyarrow or the dataset builder.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from oncopipe.catalog_types import Column

#: The radiomic features of the v1 parameter file (names in PyRadiomics' order, with the
#: reference magnitudes the synthetic cohort scales by): the model's radiomic vector.
RADIOMIC_FEATURES_FILE = Path(__file__).with_name("radiomic_features.json")


@cache
def radiomic_feature_names() -> tuple[str, ...]:
    """Return the 1,316 radiomic feature names of the model's vector, in their order."""
    raw = json.loads(RADIOMIC_FEATURES_FILE.read_text(encoding="utf-8"))
    return tuple(str(f["name"]) for f in raw["features"])


#: Columns of ``dataset.parquet`` (Glue types), for the catalog's cohort table.
COHORT_COLUMNS: tuple[Column, ...] = (
    Column("patient_key", "string", "pseudonymous patient key"),
    Column("split", "string", "train, validation or test (hash of key and seed)"),
    Column("response", "int", "therapy response label (0/1)"),
    Column("eligible", "int", "trial eligibility label (0/1), null when unknown"),
    Column("has_genomics", "boolean", "the patient has variant calls"),
    Column("has_radiomics", "boolean", "the patient has radiomic features"),
    Column("has_notes", "boolean", "the patient has note concepts"),
    Column("variant_genes", "array<string>", "genes of somatic PASS calls, by VAF desc"),
    Column("variant_alterations", "array<string>", "'GENE CHANGE' or 'GENE non-coding'"),
    Column("variant_vafs", "array<double>", "variant allele fractions"),
    Column("radiomic_series", "string", "series key of the ROI used (largest volume)"),
    Column("radiomic_roi", "string", "ROI used (largest original_shape_VoxelVolume)"),
    Column("radiomic_values", "array<float>", "z-scored features, preprocess.json order"),
    Column("note_tokens", "array<string>", "concept tokens 'concept=value'"),
    Column("note_numeric", "array<float>", "z-scored numeric value per token (0 if none)"),
    Column(
        "note_flags",
        "array<int>",
        "context bits: 1 negated, 2 uncertain, 4 historical, "
        "8 hypothetical, 16 family, 32 has numeric",
    ),
    Column("note_ids", "array<string>", "note of each token"),
    Column("note_starts", "array<int>", "start offset of each mention in its scrubbed note"),
    Column("note_ends", "array<int>", "end offset of each mention in its scrubbed note"),
)
