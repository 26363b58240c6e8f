"""The model pipeline's definition run locally: cohort -> train -> evaluate -> gate.

One small synthetic cohort, committed to a moto S3 curated bucket the way the stages
commit their tables; the runner runs the real entry points (processing.cohort,
training/train.py in script mode, training.evaluate score) on it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from oncopipe import layout
from oncopipe.cohort.columns import radiomic_feature_names
from oncopipe.cohort.synthetic import commit_tables, generate_tables
from oncopipe.pipeline import definition as d
from oncopipe.pipeline.local_runner import (
    CACHED,
    NOT_EXECUTED,
    SUCCEEDED,
    LocalPipelineRunner,
    PipelineFailed,
    model_packages,
)
from oncopipe.storage import ObjectStore
from tests.conftest import REGION, make_bucket
from tests.unit.test_pipeline_definition import settings

CURATED = "pipe-curated"
ARTIFACTS = "pipe-artifacts"
GROUP = "pipe-response"
FEATURES = [
    f for f in radiomic_feature_names() if f.startswith(("original_", "log-sigma-1-0-mm-3D_"))
]
#: small and fast: a local run of the whole pipeline takes seconds
HPARAMS = {"epochs": "10", "batch-size": "32", "lr": "0.003", "d-model": "32", "layers": "2",
           "heads": "2", "seed": "0", "threads": "1", "package": "false",
           "log-level": "WARNING"}  # fmt: skip


def _commit_cohort(store: ObjectStore) -> None:
    """Commit the synthetic feature tables (manifests + symlinks) and upload labels."""
    tables = generate_tables(900, seed=5, features=FEATURES)
    commit_tables(tables, store, CURATED, run_id="feat-1", item="pk-all")
    _commit_histograms(store, tables.labels["patient_key"].to_pylist())


#: the VAF histogram every sample of a split has (one call, in the bin of this VAF)
SPLIT_VAF = {"train": 0.05, "validation": 0.3, "test": 0.6}


def _commit_histograms(store: ObjectStore, patients: list[str]) -> None:
    """One VAF histogram document a patient (as the variants stage writes them)."""
    from oncopipe.cohort.dataset import split_of
    from oncopipe.monitor.histogram import VAF_EDGES, Histogram, Stratum, encode, to_document

    for patient in patients:
        h = Histogram.of([SPLIT_VAF[split_of(patient)]], VAF_EDGES)
        doc = to_document(h, Stratum("panel-v1", "paired"), day="2026-11-02")
        key = layout.vaf_histogram_key("2026-11-02", patient, "tumour")
        store.put_bytes(CURATED, key, encode(doc), tags={})


@dataclass
class World:
    store: ObjectStore
    definition: dict[str, Any]
    work: Path
    lines: list[str] = field(default_factory=list)

    def runner(self) -> LocalPipelineRunner:
        return LocalPipelineRunner(
            self.definition,
            self.store,
            work_dir=self.work,
            artifacts_bucket=ARTIFACTS,
            region=REGION,
            echo=self.lines.append,
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    import boto3
    from moto import mock_aws

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN",
                     "MLFLOW_TRACKING_URI"):  # fmt: skip
            mp.delenv(name, raising=False)
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY",
                            "testing"), ("AWS_DEFAULT_REGION", REGION)):  # fmt: skip
            mp.setenv(name, value)
        with mock_aws():
            client = boto3.client("s3", region_name=REGION)
            make_bucket(client, CURATED)
            make_bucket(client, ARTIFACTS)
            store = ObjectStore(client)
            _commit_cohort(store)
            definition = d.model_pipeline(
                settings(
                    curated_bucket=CURATED,
                    artifacts_bucket=ARTIFACTS,
                    model_package_group_name=GROUP,
                    hyperparameters=HPARAMS,
                    cohort_run_id="build-1",
                )
            )
            yield World(store, definition, tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def first(world: World) -> Any:
    """The first execution: the model clears both gates (AUC ~0.82 on this cohort)."""
    return world.runner().start({"MinAuc": 0.7, "ApprovedAuc": 0.8}, execution_id="exec-1")


def _evaluation(world: World, execution_id: str) -> dict[str, Any]:
    key = f"{layout.ARTIFACTS_EVALUATION}{execution_id}/evaluation.json"
    doc: dict[str, Any] = json.loads(world.store.get_bytes(ARTIFACTS, key))
    return doc


def test_condition_true_registers_a_package_pending_approval(world: World, first: Any) -> None:
    assert first.status == SUCCEEDED
    assert {n: first.status_of(n) for n in first.steps} == {
        "Cohort": SUCCEEDED, "TuneOrTrain": SUCCEEDED, "Train": SUCCEEDED,
        "Evaluate": SUCCEEDED, "CheckAuc": SUCCEEDED, "RegisterModel": SUCCEEDED,
        "AucBelowGate": NOT_EXECUTED,
        # Tune defaults to false: the tuning branch does not run
        "Tune": NOT_EXECUTED, "EvaluateTuned": NOT_EXECUTED, "CheckAucTuned": NOT_EXECUTED,
        "RegisterTunedModel": NOT_EXECUTED, "TunedAucBelowGate": NOT_EXECUTED,
    }  # fmt: skip
    # the cohort step committed the dataset where its declared output says
    dataset = f"{layout.CURATED_COHORT_DATASET}build-1/dataset.parquet"
    assert world.store.exists(CURATED, dataset)
    model = first.steps["Train"].properties["ModelArtifacts"]["S3ModelArtifacts"]
    assert model.endswith("/output/model.tar.gz") and model.startswith(f"s3://{ARTIFACTS}/models/")
    report = _evaluation(world, "exec-1")
    # the gate's inputs: a model that learnt the synthetic ground truth, approved 0.8 - 0.02
    assert report["metrics"]["auc"] >= 0.78
    assert report["comparison"]["approved_floor"] == pytest.approx(0.8 - 0.02)
    packages = model_packages(world.store, ARTIFACTS, GROUP)
    assert len(packages) == 1
    package = packages[0]
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == model
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == (
        f"s3://{ARTIFACTS}/evaluation/exec-1/evaluation.json"
    )
    assert first.steps["RegisterModel"].properties["ModelPackageArn"].endswith(f"/{GROUP}/1")
    # the package pins the artefact's bytes: the digest is the one of model.tar.gz
    bucket, key = model.removeprefix("s3://").split("/", 1)
    digest = hashlib.sha256(world.store.get_bytes(bucket, key)).hexdigest()
    assert package["CustomerMetadataProperties"] == {"artifact_sha256": digest,
                                                     "cohort_run_id": "build-1"}  # fmt: skip


def test_the_package_carries_the_drift_baseline_of_its_training_patients(
    world: World, first: Any
) -> None:
    from oncopipe.monitor.histogram import VAF_EDGES

    package = model_packages(world.store, ARTIFACTS, GROUP)[0]
    uri = package["ModelMetrics"]["ModelDataQuality"]["Statistics"]["S3Uri"]
    assert uri == f"s3://{ARTIFACTS}/evaluation/exec-1/baseline.json"
    baseline = json.loads(world.store.get_bytes(ARTIFACTS, uri.split("/", 3)[3]))
    assert baseline["format"] == 1 and baseline["model_package_arn"] == ""
    vaf = baseline["monitors"]["vaf/panel-v1/paired"]
    trained = _evaluation(world, "exec-1")["split_counts"]["train"]
    # the training patients' samples only: every call sits in the train split's bin
    assert vaf["samples"] == trained == sum(vaf["counts"])
    train_bin = max(i for i, edge in enumerate(VAF_EDGES) if edge <= SPLIT_VAF["train"])
    assert vaf["counts"][train_bin] == trained
    # and the model's predictions on the held-out test split
    predictions = baseline["monitors"]["predictions/probability"]
    tested = _evaluation(world, "exec-1")["split_counts"]["test"]
    assert 0 < sum(predictions["counts"]) <= tested


def test_rerun_skips_unchanged_steps_and_fail_names_the_auc(world: World, first: Any) -> None:
    dataset = f"{layout.CURATED_COHORT_DATASET}build-1/dataset.parquet"
    before = world.store.head(CURATED, dataset)
    world.lines.clear()
    with pytest.raises(PipelineFailed) as failed:
        # the same model against a better approved one: AUC < 0.95 - 0.02
        world.runner().start({"MinAuc": 0.7, "ApprovedAuc": 0.95}, execution_id="exec-2")
    assert "Cohort: cached" in world.lines and "Train: cached" in world.lines
    assert "Evaluate: running" in world.lines
    assert world.store.head(CURATED, dataset) == before  # not rebuilt
    result = failed.value.result
    assert result.status_of("Cohort") == CACHED and result.status_of("Train") == CACHED
    assert result.status_of("RegisterModel") == NOT_EXECUTED
    auc = _evaluation(world, "exec-2")["metrics"]["auc"]
    assert failed.value.step == "AucBelowGate"
    assert f"test AUC {auc}" in failed.value.message
    assert "MinAuc 0.7" in failed.value.message and "tolerance 0.93" in failed.value.message
    # nothing registered by the failed execution
    assert len(model_packages(world.store, ARTIFACTS, GROUP)) == 1


def test_a_new_cohort_run_id_reruns_the_cohort_step(world: World, first: Any) -> None:
    world.lines.clear()
    result = world.runner().start({"MinAuc": 0.0, "CohortRunId": "build-2"}, execution_id="e3")
    assert result.status_of("Cohort") == SUCCEEDED and "Cohort: cached" not in world.lines
    assert world.store.exists(CURATED, f"{layout.CURATED_COHORT_DATASET}build-2/dataset.parquet")
    assert len(model_packages(world.store, ARTIFACTS, GROUP)) == 2


def test_tune_runs_trials_and_registers_the_best_one(world: World, first: Any) -> None:
    """Tune=true: the tuning step's trials (random search locally), the best one evaluated."""
    definition = d.model_pipeline(
        settings(curated_bucket=CURATED, artifacts_bucket=ARTIFACTS,
                 model_package_group_name=GROUP, hyperparameters={**HPARAMS, "epochs": "3"},
                 cohort_run_id="build-1", tuning_max_jobs=2, tuning_parallel_jobs=1)
    )  # fmt: skip
    world.lines.clear()
    runner = LocalPipelineRunner(definition, world.store, work_dir=world.work,
                                 artifacts_bucket=ARTIFACTS, region=REGION,
                                 echo=world.lines.append)  # fmt: skip
    before = len(model_packages(world.store, ARTIFACTS, GROUP))
    result = runner.start({"MinAuc": 0.0, "Tune": True}, execution_id="tune-1")
    assert result.status_of("Train") == NOT_EXECUTED and result.status_of("Evaluate") == (
        NOT_EXECUTED
    )
    assert result.status_of("Cohort") == CACHED  # same cohort run as the first execution
    tune = result.steps["Tune"].properties
    trials = tune["TrainingJobSummaries"]
    assert len(trials) == 2 and len({t["TrainingJobName"] for t in trials}) == 2
    # each trial drew its own values of the tuned hyperparameters, within the ranges
    drawn = [t["TunedHyperParameters"] for t in trials]
    assert drawn[0] != drawn[1]
    for hp in drawn:
        assert set(hp) == {"lr", "radiomic-noise", "d-model", "layers"}
        assert 0.0001 <= float(hp["lr"]) <= 0.01 and hp["d-model"] in ("32", "64", "128")
    scores = [t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for t in trials]
    best = tune["BestTrainingJob"]
    assert best["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == max(scores)
    # the best trial's artefact is the one evaluated and registered
    packages = model_packages(world.store, ARTIFACTS, GROUP)
    assert len(packages) == before + 1
    url = packages[-1]["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    assert url == f"s3://{ARTIFACTS}/models/{best['TrainingJobName']}/output/model.tar.gz"
    assert world.store.exists(ARTIFACTS, url.split("/", 3)[3])
    bucket, key = url.removeprefix("s3://").split("/", 1)
    digest = hashlib.sha256(world.store.get_bytes(bucket, key)).hexdigest()
    assert packages[-1]["CustomerMetadataProperties"]["artifact_sha256"] == digest
    assert result.status_of("RegisterTunedModel") == SUCCEEDED
    # each trial kept its checkpoint under its own job name (no trial resumed another's)
    ckpt = f"{layout.ARTIFACTS_CHECKPOINTS}build-1/tune-1/tune/"
    folders = {k[len(ckpt) :].split("/")[0] for k in world.store.list_keys(ARTIFACTS, ckpt)}
    assert folders == {t["TrainingJobName"] for t in trials}


def test_bad_parameters_are_refused_before_anything_runs(world: World) -> None:
    with pytest.raises(ValueError, match="unknown pipeline parameter 'MinAUC'"):
        world.runner().start({"MinAUC": 0.5})
    with pytest.raises(ValueError, match="MinAuc: 'high' is not a Float"):
        world.runner().start({"MinAuc": "high"})


def _one_step(args: dict[str, Any]) -> dict[str, Any]:
    base = d.model_pipeline(settings())["Steps"][0]["Arguments"]
    params = d.model_parameters(settings())
    return d.build_definition(params, [d.Step("Lonely", "Processing", {**base, **args})])


def test_a_failing_job_names_its_step_and_input(world: World) -> None:
    from oncopipe.pipeline.local_runner import LocalRunError, StepFailed

    empty = _one_step({"ProcessingInputs": [{"InputName": "model", "S3Input": {
        "S3Uri": f"s3://{ARTIFACTS}/nothing-here/", "LocalPath": "/opt/ml/processing/input/m",
        "S3DataType": "S3Prefix", "S3InputMode": "File"}}]})  # fmt: skip
    runner = LocalPipelineRunner(
        empty, world.store, work_dir=world.work, artifacts_bucket=ARTIFACTS
    )
    with pytest.raises(StepFailed, match=r"step Lonely input model: no objects at s3://"):
        runner.start(execution_id="bad-1")
    # only this repository's entry points run: a container command is not a shell
    foreign = _one_step({"AppSpecification": {"ImageUri": "x", "ContainerEntrypoint": [
        "python", "-m", "json.tool"]}})  # fmt: skip
    runner = LocalPipelineRunner(foreign, world.store, work_dir=world.work,
                                 artifacts_bucket=ARTIFACTS)  # fmt: skip
    with pytest.raises(LocalRunError, match=r"json\.tool is not a module of this repository"):
        runner.start(execution_id="bad-2")
