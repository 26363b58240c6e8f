"""Drift of radiomic features, note concepts and predictions: baselines, windows, readers."""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import numpy as np
import pytest

from oncopipe import catalog, layout
from oncopipe.monitor import modalities as mod
from oncopipe.monitor.distances import distances
from oncopipe.monitor.histogram import Histogram, HistogramError
from oncopipe.monitor.job import (
    KIND_THRESHOLDS,
    SAMPLES,
    SCORE,
    baseline_document,
    compare,
    kind_rules,
    report_keys,
    run,
)
from oncopipe.monitor.window import AlarmRule
from tests.conftest import REGION, make_bucket

RULE = AlarmRule(threshold=0.03, m=1, n=1, min_samples=10)
RULES = kind_rules(RULE, KIND_THRESHOLDS)
FEATURES = ("original_firstorder_Energy", "original_shape_Sphericity")
TODAY = datetime.now(UTC).strftime("%Y-%m-%d")
YESTERDAY = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
SECRET = "pk-9f3c-SECRET"  # a value that must never appear in an error message


def radiomics_rows(rng: np.random.Generator, patients: int, *, scale: float = 1.0,
                   prefix: str = "pk") -> list[dict[str, Any]]:  # fmt: skip
    """Long-format rows of one ROI per patient: energy ~1e7, sphericity ~0.8, a volume."""
    rows = []
    for i in range(patients):
        values = {"original_firstorder_Energy": rng.lognormal(16, 0.5) * scale,
                  "original_shape_Sphericity": rng.beta(8, 2),
                  "original_shape_VoxelVolume": rng.uniform(1e3, 2e4)}  # fmt: skip
        for feature, value in values.items():
            rows.append({"patient_key": f"{prefix}{i}", "series_key": "1.2.826.0.1.3680043.1",
                         "roi": "ROI 1", "feature": feature, "value": float(value)})  # fmt: skip
    return rows


def note_rows(rng: np.random.Generator, notes: int, tokens: list[str],
              p: list[float]) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for n in range(notes):
        for t in rng.choice(len(tokens), size=5, p=p):
            concept, _, value = tokens[t].partition("=")
            rows.append({"patient_key": f"pk{n % 7}", "note_id": f"note-{n}",
                         "concept": concept, "value": value or None})  # fmt: skip
    return rows


def hist(doc: dict[str, Any]) -> Histogram:
    return Histogram(tuple(doc["edges"]), tuple(doc["counts"]), doc["samples"])


# -- radiomics ----------------------------------------------------------------------------


def test_radiomics_identical_window_scores_zero_and_a_shifted_feature_breaches() -> None:
    rng = np.random.default_rng(7)
    training = radiomics_rows(rng, 300)
    monitors = mod.radiomics_baseline(training, features=FEATURES)
    assert set(monitors) == {f"radiomics/{f}" for f in FEATURES}
    baseline = baseline_document({}, model_package_arn="arn:pkg/2", features=monitors)

    same = mod.radiomics_window(training, baseline)
    for name, doc in monitors.items():
        d = distances(hist(doc), same[name])
        assert (d.psi, d.js, d.wasserstein) == pytest.approx((0, 0, 0), abs=1e-9)

    shifted = radiomics_rows(rng, 30, scale=3.0, prefix="new")  # the energy tripled
    report = compare(baseline, mod.radiomics_window(shifted, baseline), day=TODAY, rule=RULE,
                     rules=RULES)  # fmt: skip
    by_name = {r.monitor: r for r in report.results}
    energy = by_name["radiomics/original_firstorder_Energy"]
    assert energy.breaching and energy.samples == 30
    assert not by_name["radiomics/original_shape_Sphericity"].breaching
    assert report.score("radiomics") == energy.distances.wasserstein > 0.4  # type: ignore[union-attr]


def test_quantile_cuts_skip_ties_and_outer_bins_are_open() -> None:
    values = [0.0] * 70 + [float(v) for v in range(1, 31)]  # 70 % ties at zero
    doc = mod.quantile_monitor(values)
    assert doc is not None and doc["cuts"][0] == 0.0 and doc["cuts"][-1] == 30.0
    assert doc["cuts"] == [0.0, 10.0, 20.0, 30.0]  # the deciles 0 ... 0.7 are all 0
    assert doc["counts"] == [79, 10, 11] and doc["edges"] == pytest.approx([0, 0.79, 0.89, 1])
    rows = [{"patient_key": f"p{i}", "feature": "f", "value": v}
            for i, v in enumerate([-5.0, 1e9, 15.0])]  # fmt: skip
    window = mod.radiomics_window(rows, {"monitors": {"radiomics/f": doc}})["radiomics/f"]
    assert window.counts[0] == 1 and window.counts[-1] == 1 and window.samples == 3
    assert mod.quantile_monitor([4.2] * 50) is None


def test_radiomics_uses_each_patients_largest_roi() -> None:
    rows = []
    for roi, volume, value in (("ROI 1", 100.0, 1.0), ("ROI 2", 900.0, 50.0)):
        rows += [{"patient_key": "pk1", "series_key": "s1", "roi": roi,
                  "feature": "original_shape_VoxelVolume", "value": volume},
                 {"patient_key": "pk1", "series_key": "s1", "roi": roi,
                  "feature": "f", "value": value}]  # fmt: skip
    assert mod.radiomics_values(rows, ["f"]) == {"f": [50.0]}


def test_a_constant_feature_is_not_monitored() -> None:
    rows = [{"patient_key": f"p{i}", "feature": "flat", "value": 1.0} for i in range(20)]
    assert mod.radiomics_baseline(rows, features=["flat"]) == {}


# -- notes --------------------------------------------------------------------------------

TOKENS = ["histology=adenocarcinoma", "stage=IIIA", "ecog=1", "biomarker=KRAS G12C", "smoking"]
P = [0.4, 0.2, 0.2, 0.1, 0.1]


def test_notes_categories_come_from_the_vocabulary_and_unseen_tokens_go_to_other() -> None:
    rows: list[dict[str, Any]] = [
        {"patient_key": "pk1", "note_id": "n1", "concept": "stage", "value": "IIIA"},
        {"patient_key": "pk1", "note_id": "n1", "concept": "smoking", "value": None},
        {"patient_key": "pk2", "note_id": "n2", "concept": "biomarker", "value": "EGFR L858R"},
    ]
    vocabulary = ["[PAD]", "[UNK]", "smoking", "stage=IIIA"]
    doc = mod.notes_baseline(rows, vocabulary=vocabulary)[mod.NOTES_MONITOR]
    assert doc["categories"] == ["smoking", "stage=IIIA", mod.OTHER]
    assert doc["edges"] == [0.0, 1.0, 2.0, 3.0] and doc["counts"] == [1, 1, 1]
    assert doc["samples"] == 2  # notes, not mentions
    unseen = [
        {"patient_key": "pk3", "note_id": "n3", "concept": "therapy", "value": "osimertinib"},
        {"patient_key": "pk3", "note_id": "n3", "concept": "stage", "value": "IIIA"},
    ]
    window = mod.notes_window(unseen, {"monitors": {mod.NOTES_MONITOR: doc}})[mod.NOTES_MONITOR]
    assert window.counts == (0, 1, 1) and window.samples == 1


def test_notes_identical_frequencies_score_zero_and_a_new_mix_breaches_on_js() -> None:
    rng = np.random.default_rng(11)
    training = note_rows(rng, 400, TOKENS, P)
    monitors = mod.notes_baseline(training)
    assert monitors[mod.NOTES_MONITOR]["categories"][0] == "histology=adenocarcinoma"
    baseline = baseline_document({}, model_package_arn="arn:pkg/2", features=monitors)
    same = compare(baseline, mod.notes_window(training, baseline), day=TODAY, rule=RULE,
                   rules=RULES)  # fmt: skip
    assert same.score("notes") == pytest.approx(0.0, abs=1e-9)
    changed = note_rows(rng, 20, [*TOKENS, "therapy=pembrolizumab"], [0.05, 0.05, 0.05, 0.05,
                                                                      0.1, 0.7])  # fmt: skip
    report = compare(baseline, mod.notes_window(changed, baseline), day=TODAY, rule=RULE,
                     rules=RULES)  # fmt: skip
    (result,) = report.results
    assert result.breaching and result.distances is not None
    assert report.score("notes") == result.distances.js > KIND_THRESHOLDS["notes"]
    assert report.as_dict()["kinds"]["notes"]["alarm_distance"] == "js"


def test_a_categorical_baseline_without_its_labels_is_refused() -> None:
    doc = mod.notes_baseline(note_rows(np.random.default_rng(1), 5, TOKENS, P))
    doc[mod.NOTES_MONITOR]["categories"] = ["only one"]
    with pytest.raises(HistogramError, match="notes/concepts"):
        mod.notes_window([], {"monitors": doc})


# -- predictions --------------------------------------------------------------------------


def capture_line(results: Any, encoding: str = "BASE64") -> str:
    """One data-capture record as SageMaker writes it (input and output captured)."""
    request = json.dumps({"patient_key": SECRET, "radiomics": {"original_shape_Sphericity": 0.8}})
    response = json.dumps(results)

    def encoded(text: str) -> str:
        return base64.b64encode(text.encode()).decode() if encoding == "BASE64" else text

    return json.dumps({
        "captureData": {
            "endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                              "data": encoded(request), "encoding": encoding},
            "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                               "data": encoded(response), "encoding": encoding},
        },
        "eventMetadata": {"eventId": "b7a1f5e2-4c1d-4e43-9d1a-0c6b0c1f0e11",
                          "inferenceTime": f"{TODAY}T10:15:02Z"},
        "eventVersion": "0",
    })  # fmt: skip


def result(p: float) -> dict[str, Any]:
    return {"patient_key": SECRET, "response_probability": p,
            "modalities_present": ["genomics", "notes"]}  # fmt: skip


def test_capture_probabilities_of_base64_and_json_records() -> None:
    body = "\n".join([
        capture_line(result(0.71)),
        capture_line([result(0.12), result(0.33)]),
        "",
        capture_line(result(1.0), encoding="JSON"),
        capture_line([result(0.05)], encoding="JSON"),
    ]).encode()  # fmt: skip
    assert mod.capture_probabilities(body, where="s3://a/k.jsonl") == [0.71, 0.12, 0.33, 1.0, 0.05]
    h = mod.predictions_histogram([0.71, 0.12, 0.33, 1.0, 0.05])
    assert h.edges == mod.PROBABILITY_EDGES and len(h.counts) == 20
    assert h.counts[-1] == 1 and h.counts[14] == 1 and h.samples == 5


@pytest.mark.parametrize(("line", "reason"), [
    (f'{{"captureData": {{"endpointOutput": "{SECRET}"', "not a data-capture record"),
    (json.dumps({"captureData": {"endpointInput": {"data": SECRET}}}), "not a data-capture"),
    (json.dumps({"captureData": {"endpointOutput": {"data": SECRET, "encoding": "BASE64"}}}),
     "the BASE64 output is not JSON"),
    (json.dumps({"captureData": {"endpointOutput": {"data": SECRET, "encoding": "CSV"}}}),
     "encoding is not BASE64 or JSON"),
    (capture_line({"patient_key": SECRET}), "result 0 has no response_probability"),
    (capture_line([result(0.2), result(1.5)], encoding="JSON"), "result 1 has no response"),
])  # fmt: skip
def test_a_malformed_capture_record_names_key_and_line_not_content(line: str, reason: str) -> None:
    body = f"{capture_line(result(0.4))}\n\n{line}\n".encode()
    with pytest.raises(mod.WindowError, match=reason) as caught:
        mod.capture_probabilities(body, where="s3://artifacts/data-capture/ep/x.jsonl")
    assert str(caught.value).startswith("s3://artifacts/data-capture/ep/x.jsonl, line 3: ")
    assert SECRET not in str(caught.value) and caught.value.__cause__ is None


# -- readers on S3 ------------------------------------------------------------------------


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    from moto import mock_aws

    with mock_aws():
        client = boto3.client("s3", region_name=REGION)
        make_bucket(client, "curated")
        make_bucket(client, "artifacts")
        yield client


def put_parquet(s3: Any, key: str, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, compression="zstd")
    s3.put_object(Bucket="curated", Key=key, Body=buffer.getvalue())


def commit(s3: Any, table: str, item: str, keys: list[str]) -> None:
    link = catalog.symlink_key(table, f"_manifests/run-1/{table}/{item}.json")
    s3.put_object(Bucket="curated", Key=link, Body=catalog.symlink_body("curated", keys))


def test_table_windows_read_the_files_committed_that_day_only(s3: Any) -> None:
    rng = np.random.default_rng(5)
    baseline = baseline_document({}, model_package_arn="arn:pkg/2", features={
        **mod.radiomics_baseline(radiomics_rows(rng, 200), features=FEATURES),
        **mod.notes_baseline(note_rows(rng, 100, TOKENS, P))})  # fmt: skip
    committed = f"{layout.CURATED_IMAGING_RADIOMICS}pk1/1.2.3.parquet"
    leftover = f"{layout.CURATED_IMAGING_RADIOMICS}pk2/1.2.4.parquet"  # no commit names it
    put_parquet(s3, committed, radiomics_rows(rng, 12))
    put_parquet(s3, leftover, radiomics_rows(rng, 50, prefix="x"))
    commit(s3, "radiomics", "series-1", [committed])
    concepts = f"{catalog.NOTE_CONCEPTS.prefix}pk1/note-1.parquet"
    put_parquet(s3, concepts, note_rows(rng, 3, TOKENS, P))
    commit(s3, "note_concepts", "note-1", [concepts])

    assert mod.committed_on(s3, "curated", "radiomics", TODAY) == [committed]
    radiomics = mod.read_radiomics_window(s3, bucket="curated", day=TODAY, baseline=baseline)
    assert {h.samples for h in radiomics.values()} == {12}
    notes = mod.read_notes_window(s3, bucket="curated", day=TODAY, baseline=baseline)
    assert notes[mod.NOTES_MONITOR].samples == 3 and notes[mod.NOTES_MONITOR].total == 15
    before = mod.read_radiomics_window(s3, bucket="curated", day=YESTERDAY, baseline=baseline)
    assert {h.samples for h in before.values()} == {0}


def test_unreadable_table_files_name_the_key(s3: Any) -> None:
    baseline = {"monitors": mod.radiomics_baseline(radiomics_rows(np.random.default_rng(1), 50),
                                                   features=FEATURES)}  # fmt: skip
    broken = f"{layout.CURATED_IMAGING_RADIOMICS}pk1/s.parquet"
    s3.put_object(Bucket="curated", Key=broken, Body=f"not parquet {SECRET}".encode())
    commit(s3, "radiomics", "s", [broken])
    with pytest.raises(mod.WindowError, match=f"s3://curated/{broken}: not Parquet") as caught:
        mod.read_radiomics_window(s3, bucket="curated", day=TODAY, baseline=baseline)
    assert SECRET not in str(caught.value)
    commit(s3, "radiomics", "s", [f"{layout.CURATED_GENOMICS_VARIANTS}pk1/s.parquet"])
    with pytest.raises(mod.WindowError, match=r"_symlinks/.*, line 1: not a data file"):
        mod.committed_on(s3, "curated", "radiomics", TODAY)


def test_predictions_window_reads_the_days_capture_of_every_variant(s3: Any) -> None:
    folder = TODAY.replace("-", "/")
    other = YESTERDAY.replace("-", "/")
    files = {
        f"data-capture/serving-ep/pruned/{folder}/09/a.jsonl": [0.1, 0.2],
        f"data-capture/serving-ep/pruned/{folder}/17/b.jsonl": [0.9],
        f"data-capture/serving-ep/canary/{folder}/17/c.jsonl": [0.5],
        f"data-capture/serving-ep/pruned/{other}/23/old.jsonl": [0.3],
        f"data-capture/other-ep/pruned/{folder}/09/d.jsonl": [0.4],
    }
    for key, probabilities in files.items():
        body = "\n".join(capture_line(result(p)) for p in probabilities) + "\n"
        s3.put_object(Bucket="artifacts", Key=key, Body=body.encode())
    window = mod.read_predictions_window(s3, bucket="artifacts", endpoint_name="serving-ep",
                                         day=TODAY)[mod.PREDICTIONS_MONITOR]  # fmt: skip
    assert window.samples == 4 and window.total == 4
    assert window == mod.predictions_histogram([0.1, 0.2, 0.9, 0.5])
    s3.put_object(Bucket="artifacts", Key=f"data-capture/serving-ep/pruned/{folder}/18/e.jsonl",
                  Body=b"{}\n" + capture_line(result(0.2)).encode())  # fmt: skip
    with pytest.raises(mod.WindowError, match=rf"pruned/{folder}/18/e.jsonl, line 1: "):
        mod.read_predictions_window(s3, bucket="artifacts", endpoint_name="serving-ep", day=TODAY)


# -- the job ------------------------------------------------------------------------------


def test_run_with_feature_windows_publishes_a_score_per_kind(s3: Any) -> None:
    rng = np.random.default_rng(3)
    cw = boto3.client("cloudwatch", region_name=REGION)
    features = {
        **mod.radiomics_baseline(radiomics_rows(rng, 300), features=FEATURES),
        **mod.notes_baseline(note_rows(rng, 300, TOKENS, P)),
        **mod.predictions_baseline(rng.beta(2, 5, 500)),
    }
    baseline = baseline_document({}, model_package_arn="arn:pkg/2", features=features)
    assert json.loads(json.dumps(baseline))["monitors"]["notes/concepts"]["categories"]
    windows = {
        **mod.radiomics_window(radiomics_rows(rng, 25, scale=6.0), baseline),
        **mod.notes_window(note_rows(rng, 25, TOKENS, P), baseline),
        mod.PREDICTIONS_MONITOR: mod.predictions_histogram(rng.beta(5, 2, 25)),  # shifted up
    }
    report = run(s3=s3, cloudwatch=cw, curated_bucket="curated",
                 histograms_prefix=layout.CURATED_GENOMICS_VAF_HISTOGRAMS,
                 artifacts_bucket="artifacts", baseline=baseline, day=TODAY, rule=RULE,
                 environment="test", feature_windows=windows, rules=RULES)  # fmt: skip
    breaching = {r.monitor for r in report.results if r.breaching}
    assert breaching == {"radiomics/original_firstorder_Energy", "predictions/probability"}

    def published(metric: str, monitor: str) -> list[float]:
        answer = cw.get_metric_statistics(
            Namespace="Oncopipe", MetricName=metric, Period=3600, Statistics=["Maximum"],
            Dimensions=[{"Name": "Environment", "Value": "test"},
                        {"Name": "Monitor", "Value": monitor}],
            StartTime=datetime.now(UTC) - timedelta(hours=1),
            EndTime=datetime.now(UTC) + timedelta(hours=1))  # fmt: skip
        return [p["Maximum"] for p in answer["Datapoints"]]

    for kind in ("radiomics", "notes", "predictions"):
        assert published(SCORE, kind) == [pytest.approx(report.score(kind))]
    assert published(SCORE, "predictions")[0] > KIND_THRESHOLDS["predictions"]
    assert published(SCORE, "notes")[0] < KIND_THRESHOLDS["notes"]
    assert published(SAMPLES, "radiomics") == [25.0]
    assert published(SAMPLES, "radiomics/original_firstorder_Energy") == []  # summary only
    assert published(SAMPLES, "notes/concepts") == [25.0]
    json_key, png_key = report_keys(TODAY)
    body = json.loads(s3.get_object(Bucket="artifacts", Key=json_key)["Body"].read())
    assert body["kinds"]["predictions"]["threshold"] == KIND_THRESHOLDS["predictions"]
    assert s3.get_object(Bucket="artifacts", Key=png_key)["Body"].read()[:4] == b"\x89PNG"


def test_a_kind_not_read_is_reported_not_scored(s3: Any) -> None:
    cw = boto3.client("cloudwatch", region_name=REGION)
    baseline = baseline_document({}, model_package_arn="arn:pkg/2",
                                 features=mod.predictions_baseline([0.2] * 50))  # fmt: skip
    report = run(s3=s3, cloudwatch=cw, curated_bucket="curated",
                 histograms_prefix=layout.CURATED_GENOMICS_VAF_HISTOGRAMS,
                 artifacts_bucket="artifacts", baseline=baseline, day=TODAY, rule=RULE,
                 environment="test",
                 unavailable={"predictions": "not read: no endpoint"})  # fmt: skip
    (only,) = report.results
    assert only.note == "not read: no endpoint" and only.distances is None
    with pytest.raises(HistogramError, match="vaf/ monitors"):
        run(s3=s3, cloudwatch=cw, curated_bucket="curated", histograms_prefix="h/",
            artifacts_bucket="artifacts", baseline=baseline, day=TODAY, rule=RULE,
            environment="test",
            feature_windows={"vaf/x/paired": Histogram.empty([0, 1])})  # fmt: skip


def test_a_malformed_monitor_document_is_refused() -> None:
    with pytest.raises(HistogramError, match="monitor document"):
        baseline_document({}, model_package_arn="", features={"notes/concepts": {"edges": [0]}})


def test_handler_reports_kinds_it_cannot_read(monkeypatch: pytest.MonkeyPatch, s3: Any) -> None:
    for name, value in {"CURATED_BUCKET": "curated", "ARTIFACTS_BUCKET": "artifacts",
                        "MODEL_PACKAGE_GROUP": "g", "ONCOPIPE_ENV": "test",
                        "DRIFT_THRESHOLD": "0.03", "DRIFT_ALARM_WINDOWS": "1",
                        "DRIFT_ALARM_OF_WINDOWS": "1", "DRIFT_MIN_SAMPLES": "10",
                        "DRIFT_KIND_THRESHOLDS": '{"predictions": 0.2}'}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    from lambdas.model_drift import handler

    settings = handler.Settings.from_env()
    assert settings.rules["predictions"].threshold == 0.2 and settings.endpoint_name == ""
    rng = np.random.default_rng(2)
    baseline = baseline_document({}, model_package_arn="arn:pkg/2", features={
        **mod.notes_baseline(note_rows(rng, 30, TOKENS, P)),
        **mod.predictions_baseline([0.3] * 30)})  # fmt: skip
    windows, unavailable = handler.feature_windows(s3, settings, baseline, TODAY)
    assert windows[mod.NOTES_MONITOR].samples == 0
    assert unavailable == {"predictions": "not read: no endpoint (SERVING_ENDPOINT_NAME is empty)"}
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # a bundle without pyarrow
    _, unavailable = handler.feature_windows(s3, settings, baseline, TODAY)
    assert unavailable["notes"] == "not read: pyarrow is not in the function's bundle"


# -- baselines at training time (the cohort dataset's training split) ---------------------

NOTE_EXTRA = {"numeric_value": None, "negated": False, "certainty": "certain",
              "temporality": "current", "experiencer": "patient", "start": 0, "end": 1}  # fmt: skip


def cohort_notes(rng: np.random.Generator, patients: list[str], tokens: list[str],
                 p: list[float]) -> list[dict[str, Any]]:  # fmt: skip
    """One to three notes of five concept mentions per patient (curated table's rows)."""
    rows = []
    for patient in patients:
        for n in range(int(rng.integers(1, 4))):
            for t in rng.choice(len(tokens), size=5, p=p):
                concept, _, value = tokens[t].partition("=")
                rows.append({"patient_key": patient, "note_id": f"note-{n}", "concept": concept,
                             "value": value or None, **NOTE_EXTRA})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def cohort() -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """A cohort dataset of 400 patients and the curated rows it was built from."""
    import pyarrow as pa

    from oncopipe.cohort.dataset import build_dataset

    rng = np.random.default_rng(29)
    radiomics = radiomics_rows(rng, 400)
    # every tenth patient lacks sphericity: missing stays missing, not the training mean
    radiomics = [r for r in radiomics if r["feature"] != "original_shape_Sphericity"
                 or int(r["patient_key"][2:]) % 10 != 0]  # fmt: skip
    patients = [f"pk{i}" for i in range(400)]
    notes = cohort_notes(rng, patients, TOKENS, P)
    # once: a token outside the vocabulary, counted as (other)
    notes.append({"patient_key": "pk1", "note_id": "note-9", "concept": "therapy",
                  "value": "rare", **NOTE_EXTRA})  # fmt: skip
    variants = pa.table({"patient_key": pa.array([], pa.string()),
                         "filter": pa.array([], pa.string()), "gene": pa.array([], pa.string()),
                         "protein_change": pa.array([], pa.string()),
                         "vaf": pa.array([], pa.float64())})  # fmt: skip
    labels = pa.table({"patient_key": patients, "response": [i % 2 for i in range(400)]})
    dataset = build_dataset(variants, pa.Table.from_pylist(radiomics),
                            pa.Table.from_pylist(notes), labels, seed=1)  # fmt: skip
    return dataset, radiomics, notes


def test_the_training_baseline_has_radiomics_and_notes_of_training_patients_only(
    cohort: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    from oncopipe.monitor.baseline import training_baseline

    dataset, radiomics, notes = cohort
    train = set(dataset.split("train")["patient_key"].to_pylist())
    assert 200 < len(train) < 400  # the others are validation and test patients
    baseline = training_baseline(None, sorted(train), dataset=dataset,
                                 features=mod.predictions_baseline([0.2, 0.4]))  # fmt: skip
    monitors = baseline["monitors"]
    assert set(monitors) == {"radiomics/original_firstorder_Energy",
                             "radiomics/original_shape_Sphericity",
                             "radiomics/original_shape_VoxelVolume", "notes/concepts",
                             "predictions/probability"}  # fmt: skip
    energy, sphericity = (monitors[f"radiomics/{f}"] for f in FEATURES)
    assert energy["samples"] == len(train)
    assert sphericity["samples"] == sum(int(k[2:]) % 10 != 0 for k in train)

    # the same documents as from the curated rows of the training patients: table units
    # (the cohort stores z-scores), the model's features and vocabulary, notes as samples
    trained_rows = [r for r in radiomics if r["patient_key"] in train]
    features = dataset.preprocessing.radiomic_features
    from_table = mod.radiomics_baseline(trained_rows, features=features)
    for name, doc in from_table.items():
        assert monitors[name]["counts"] == doc["counts"]
        assert monitors[name]["cuts"] == pytest.approx(doc["cuts"], rel=1e-6)
    trained_notes = [r for r in notes if r["patient_key"] in train]
    vocabulary = dataset.preprocessing.note_tokens
    from_rows = mod.notes_baseline(trained_notes, vocabulary=vocabulary)
    assert monitors["notes/concepts"] == from_rows[mod.NOTES_MONITOR]
    assert monitors["notes/concepts"]["samples"] == len({(r["patient_key"], r["note_id"])
                                                         for r in trained_notes})  # fmt: skip
    assert "therapy=rare" not in monitors["notes/concepts"]["categories"]


def test_a_training_like_day_scores_below_the_threshold_and_a_shifted_one_above(
    cohort: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    from oncopipe.monitor.baseline import training_baseline

    dataset, radiomics, notes = cohort
    train = set(dataset.split("train")["patient_key"].to_pylist())
    baseline = training_baseline(None, sorted(train), dataset=dataset)

    def scores(radiomic_rows: list[dict[str, Any]],
               note_rows: list[dict[str, Any]]) -> dict[str, float | None]:  # fmt: skip
        windows = {**mod.radiomics_window(radiomic_rows, baseline),
                   **mod.notes_window(note_rows, baseline)}  # fmt: skip
        report = compare(baseline, windows, day=TODAY, rule=RULE, rules=RULES)
        return {kind: report.score(kind) for kind in ("radiomics", "notes")}

    # the training patients themselves, read back from the curated tables: about 0 (the
    # cohort's float32 z-scores can move a cut, itself a training value, by a rounding
    # error, and that patient's value to the bin below: <= 10 patients of ~280, by 0.1)
    same = scores([r for r in radiomics if r["patient_key"] in train],
                  [r for r in notes if r["patient_key"] in train])  # fmt: skip
    assert same["radiomics"] == pytest.approx(0.0, abs=0.005)
    assert same["notes"] == pytest.approx(0.0, abs=1e-9)

    rng = np.random.default_rng(31)
    new = [f"new{i}" for i in range(40)]
    like = scores(radiomics_rows(rng, 40, prefix="new"), cohort_notes(rng, new, TOKENS, P))
    assert like["radiomics"] < KIND_THRESHOLDS["radiomics"]  # type: ignore[operator]
    assert like["notes"] < KIND_THRESHOLDS["notes"]  # type: ignore[operator]

    shifted = scores(radiomics_rows(rng, 40, scale=6.0, prefix="new"),  # energy x6
                     cohort_notes(rng, new, [*TOKENS, "therapy=pembrolizumab"],
                                  [0.02, 0.02, 0.02, 0.02, 0.02, 0.9]))  # fmt: skip
    assert shifted["radiomics"] > KIND_THRESHOLDS["radiomics"]  # type: ignore[operator]
    assert shifted["notes"] > KIND_THRESHOLDS["notes"]  # type: ignore[operator]


def test_a_split_without_notes_gets_no_notes_monitor(
    cohort: tuple[Any, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    import pyarrow as pa

    from oncopipe.cohort.dataset import CohortDataset
    from oncopipe.monitor.baseline import cohort_monitors

    dataset, _, _ = cohort
    table = dataset.table
    empty = pa.array([[]] * table.num_rows, pa.list_(pa.string()))
    for column in ("note_tokens", "note_ids"):
        table = table.set_column(table.schema.get_field_index(column), column, empty)
    monitors = cohort_monitors(CohortDataset(table, dataset.preprocessing))
    assert monitors and not mod.monitors_of({"monitors": monitors}, mod.NOTES)
