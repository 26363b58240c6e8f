"""Synthetic cohort and cohort dataset: schemas, ground truth, splits, train-only statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from oncopipe.catalog import VARIANTS
from oncopipe.cohort.columns import radiomic_feature_names
from oncopipe.cohort.dataset import (
    COHORT_COLUMNS,
    CohortError,
    build_dataset,
    build_dataset_from_dir,
    cohort_schema,
    read_dataset,
    split_of,
    write_dataset,
)
from oncopipe.cohort.synthetic import (
    GROUND_TRUTH,
    SyntheticTables,
    generate_tables,
    write_tables,
)
from oncopipe.pseudonym import is_patient_key
from oncopipe.radiomics.core import schema as radiomics_schema

GLUE = {"string": pa.string(), "bigint": pa.int64(), "int": pa.int32(), "double": pa.float64()}
# a small feature set keeps the tables small; it holds the volume and signal features
SMALL = [f for f in radiomic_feature_names() if f.startswith("original_")]


@pytest.fixture(scope="module")
def tables() -> SyntheticTables:
    return generate_tables(1500, seed=3, features=SMALL)


@pytest.fixture(scope="module")
def cohort(tables: SyntheticTables) -> Any:
    return build_dataset(tables.variants, tables.radiomics, tables.notes, tables.labels, seed=5)


def _truth(tables: SyntheticTables) -> dict[str, dict[str, Any]]:
    return {r["patient_key"]: r for r in tables.truth.to_pylist()}


def test_feature_names_are_pyradiomics_v1_names() -> None:
    names = radiomic_feature_names()
    assert len(names) == len(set(names)) == 1316
    assert sum(n.startswith("original_shape_") for n in names) == 14
    assert {
        "original_firstorder_Entropy",
        "wavelet-LLH_glcm_Contrast",
        "log-sigma-2-0-mm-3D_gldm_DependenceEntropy",
    } <= set(names)


def test_cached_feature_names_equal_what_pyradiomics_extracts() -> None:
    pytest.importorskip("radiomics")
    from oncopipe.cohort.synthetic import _extract_reference

    assert tuple(_extract_reference()) == radiomic_feature_names()


def test_tables_have_the_stage_schemas(tables: SyntheticTables) -> None:
    expected = pa.schema([(c.name, GLUE[c.type]) for c in VARIANTS.columns])
    assert tables.variants.schema.equals(expected)
    assert tables.radiomics.schema.equals(radiomics_schema())
    assert tables.notes.column_names == [
        "patient_key",
        "note_id",
        "concept",
        "value",
        "numeric_value",
        "negated",
        "certainty",
        "temporality",
        "experiencer",
        "section",
        "start",
        "end",
    ]
    assert tables.labels.column_names == ["patient_key", "response", "eligible"]
    keys = tables.labels["patient_key"].to_pylist()
    assert len(set(keys)) == 1500 and all(is_patient_key(k) for k in keys)
    # every ROI has every requested feature once
    per_roi = tables.radiomics.group_by(["patient_key", "series_key", "roi"]).aggregate(
        [("feature", "count")]
    )
    assert set(per_roi["feature_count"].to_pylist()) == {len(SMALL)}
    assert set(tables.variants["filter"].to_pylist()) == {"PASS", "germline"}


def test_full_feature_set_for_two_thousand_patients_is_fast() -> None:
    import time

    t0 = time.perf_counter()
    big = generate_tables(2000, seed=1)
    elapsed = time.perf_counter() - t0
    per_roi = big.radiomics.num_rows / len(
        set(
            zip(
                big.radiomics["patient_key"].to_pylist()[::1316],
                big.radiomics["roi"].to_pylist()[::1316],
                strict=True,
            )
        )
    )
    assert per_roi == 1316
    assert elapsed < 20  # goal < 10 s; slack for a loaded two-core machine


def test_generation_is_deterministic_by_seed(tables: SyntheticTables) -> None:
    again = generate_tables(1500, seed=3, features=SMALL)
    for name in ("variants", "radiomics", "notes", "labels"):
        assert getattr(again, name).equals(getattr(tables, name))
    other = generate_tables(50, seed=4, features=SMALL)
    assert other.labels["patient_key"][0] != tables.labels["patient_key"][0]


def test_labels_follow_the_documented_rule(tables: SyntheticTables) -> None:
    assert "KRAS G12C" in GROUND_TRUTH and "ECOG" in GROUND_TRUTH
    truth = tables.truth.to_pandas()
    y = tables.labels["response"].to_numpy()
    factors = (
        truth["kras_g12c"].astype(int)
        + (truth["heterogeneity"] > 0).astype(int)
        + (truth["ecog"] <= 1).astype(int)
    ).to_numpy()
    assert y[factors == 3].mean() > 0.75
    assert y[factors <= 1].mean() < 0.05
    for factor in (truth["kras_g12c"], truth["heterogeneity"] > 0, truth["ecog"] <= 1):
        f = factor.to_numpy()
        assert f[y == 1].mean() > f[y == 0].mean() + 0.25  # positives are enriched
    # each modality is missing for ~10 % of patients, independently
    for col in ("has_genomics", "has_radiomics", "has_notes"):
        assert 0.06 < 1 - truth[col].mean() < 0.14


def test_decoys_are_present(tables: SyntheticTables) -> None:
    v = tables.variants.to_pandas()
    germline_g12c = v[
        (v["filter"] == "germline") & (v["gene"] == "KRAS") & (v["protein_change"] == "G12C")
    ]
    assert len(germline_g12c) > 10
    assert {"G12D", "G12V"} <= set(v[v["gene"] == "KRAS"]["protein_change"])
    n = tables.notes.to_pandas()
    family = n[(n["experiencer"] == "family") & (n["value"] == "KRAS G12C")]
    assert len(family) > 10
    assert ((n["concept"] == "ecog") & (n["temporality"] == "historical")).sum() > 50
    assert ((n["concept"] == "metastasis") & n["negated"]).sum() > 20
    # the current, affirmed ECOG of the patient equals the latent ECOG
    truth = _truth(tables)
    current = n[
        (n["concept"] == "ecog")
        & (n["temporality"] == "current")
        & ~n["negated"]
        & (n["experiencer"] == "patient")
    ]
    assert all(int(r.value) == truth[r.patient_key]["ecog"] for r in current.itertuples())


def test_splits_are_disjoint_deterministic_and_per_patient(
    tables: SyntheticTables, cohort: Any
) -> None:
    t = cohort.table
    keys = t["patient_key"].to_pylist()
    assert len(keys) == len(set(keys)) == 1500
    by_split = {
        s: set(cohort.split(s)["patient_key"].to_pylist()) for s in ("train", "validation", "test")
    }
    assert not (by_split["train"] & by_split["test"])
    assert not (by_split["train"] & by_split["validation"])
    assert not (by_split["validation"] & by_split["test"])
    assert 0.62 < len(by_split["train"]) / 1500 < 0.78
    # a patient's split does not depend on who else is in the cohort
    half = tables.labels.slice(0, 300)
    small = build_dataset(tables.variants, tables.radiomics, tables.notes, half, seed=5)
    for k, s in zip(
        small.table["patient_key"].to_pylist(), small.table["split"].to_pylist(), strict=True
    ):
        assert k in by_split[s] and s == split_of(k, 5)
    # another seed reshuffles
    assert split_of(keys[0], 5) == split_of(keys[0], 5)
    assert [split_of(k, 6) for k in keys[:50]] != [split_of(k, 5) for k in keys[:50]]


def _with_value(table: pa.Table, patient: str, feature: str, value: float) -> pa.Table:
    hit = pc.and_(pc.equal(table["patient_key"], patient), pc.equal(table["feature"], feature))
    values = pc.if_else(hit, value, table["value"])
    return table.set_column(table.schema.get_field_index("value"), "value", values)


def test_normalisation_is_fitted_on_the_training_split_only(
    tables: SyntheticTables, cohort: Any
) -> None:
    prep = cohort.preprocessing
    feature = "original_firstorder_Entropy"
    j = prep.radiomic_features.index(feature)
    test_rows = cohort.split("test").filter(pc.field("has_radiomics")).to_pylist()
    train_rows = cohort.split("train").filter(pc.field("has_radiomics")).to_pylist()
    changed_test = _with_value(tables.radiomics, test_rows[0]["patient_key"], feature, 1e6)
    again = build_dataset(tables.variants, changed_test, tables.notes, tables.labels, seed=5)
    assert again.preprocessing.radiomic_mean == prep.radiomic_mean
    assert again.preprocessing.radiomic_std == prep.radiomic_std
    # the changed test value is normalised with the training statistics (and clipped)
    row = (
        again.split("test")
        .filter(pc.equal(pc.field("patient_key"), test_rows[0]["patient_key"]))
        .to_pylist()[0]
    )
    assert row["radiomic_values"][j] == pytest.approx(10.0)
    changed_train = _with_value(tables.radiomics, train_rows[0]["patient_key"], feature, 1e6)
    moved = build_dataset(tables.variants, changed_train, tables.notes, tables.labels, seed=5)
    assert moved.preprocessing.radiomic_mean[j] != prep.radiomic_mean[j]
    # train-split radiomic values are z-scores
    train_values = np.array([r["radiomic_values"] for r in train_rows])
    assert abs(train_values[:, j].mean()) < 0.05 and abs(train_values[:, j].std() - 1) < 0.05


def test_only_somatic_calls_count_and_missing_modalities_are_flagged(
    tables: SyntheticTables, cohort: Any
) -> None:
    truth = _truth(tables)
    v = tables.variants.to_pandas()
    germline_only = set(
        v[(v["filter"] == "germline") & (v["protein_change"] == "G12C")]["patient_key"]
    ) - set(v[(v["filter"] == "PASS") & (v["protein_change"] == "G12C")]["patient_key"])
    assert germline_only
    rows = {r["patient_key"]: r for r in cohort.table.to_pylist()}
    for k in germline_only:
        assert "KRAS G12C" not in rows[k]["variant_alterations"]
        assert rows[k]["has_genomics"]
    for k, r in rows.items():
        t = truth[k]
        assert (r["has_genomics"], r["has_radiomics"], r["has_notes"]) == (
            t["has_genomics"],
            t["has_radiomics"],
            t["has_notes"],
        )
        assert ("KRAS G12C" in r["variant_alterations"]) == (t["kras_g12c"] and t["has_genomics"])
        if not r["has_radiomics"]:
            assert r["radiomic_values"] == [] and r["radiomic_roi"] is None
        if not r["has_notes"]:
            assert r["note_tokens"] == []


def test_the_largest_roi_is_used(tables: SyntheticTables, cohort: Any) -> None:
    r = tables.radiomics
    volumes = r.filter(pc.equal(r["feature"], "original_shape_VoxelVolume")).to_pandas()
    counts = volumes.groupby("patient_key").size()
    two = counts[counts == 2].index
    assert len(two) > 100
    rows = {x["patient_key"]: x for x in cohort.table.to_pylist()}
    chosen_second = 0
    for k in two:
        best = volumes[volumes["patient_key"] == k].sort_values("value").iloc[-1]
        assert (rows[k]["radiomic_series"], rows[k]["radiomic_roi"]) == (
            best["series_key"],
            best["roi"],
        )
        chosen_second += best["roi"] == "ROI 2"
    assert 0 < chosen_second < len(two)  # the largest ROI is not always the first one


def test_vocabularies_come_from_the_training_split(cohort: Any) -> None:
    prep = cohort.preprocessing
    assert prep.genes[:2] == prep.alterations[:2] == prep.note_tokens[:2] == ["[PAD]", "[UNK]"]
    assert "KRAS G12C" in prep.alterations and "ecog=1" in prep.note_tokens
    train_alts = {a for r in cohort.split("train").to_pylist() for a in r["variant_alterations"]}
    assert set(prep.alterations[2:]) <= train_alts
    others = {
        a
        for s in ("validation", "test")
        for r in cohort.split(s).to_pylist()
        for a in r["variant_alterations"]
    }
    assert others - train_alts  # some alterations are only seen outside training
    assert not (set(prep.alterations) & (others - train_alts))
    assert set(prep.numeric_stats) >= {"ecog", "smoking"}


def test_dataset_round_trips_through_parquet(tmp_path: Path, tables: SyntheticTables) -> None:
    write_tables(tables, tmp_path / "in")
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == [
        "labels.parquet",
        "notes.parquet",
        "radiomics.parquet",
        "variants.parquet",
    ]
    ds = build_dataset_from_dir(tmp_path / "in", seed=5)
    paths = write_dataset(ds, tmp_path / "out")
    assert {p.name for p in paths.values()} == {"dataset.parquet", "preprocess.json"}
    back = read_dataset(tmp_path / "out")
    assert back.table.equals(ds.table)
    assert back.preprocessing.to_json() == ds.preprocessing.to_json()
    assert [c.name for c in COHORT_COLUMNS] == cohort_schema().names == ds.table.column_names


def test_a_table_without_required_columns_is_rejected(tables: SyntheticTables) -> None:
    with pytest.raises(CohortError, match="variants table: missing columns: filter"):
        build_dataset(
            tables.variants.drop_columns(["filter"]), tables.radiomics, tables.notes, tables.labels
        )
    empty = tables.labels.slice(0, 0)
    with pytest.raises(CohortError, match="no patient has a response label"):
        build_dataset(tables.variants, tables.radiomics, tables.notes, empty)
