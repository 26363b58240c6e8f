"""The model stack's ``AWS::SageMaker::Pipeline``: the definition deployed, its roles, grants."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template

from oncopipe.pipeline import definition as d
from oncopipe.pipeline.validate import validate

#: long enough for botocore's length checks of ARNs (it checks no patterns)
TOKEN = "cfn-token-" + "x" * 24


def _render(value: Any) -> Any:
    """The deployed JSON with every CloudFormation token as :data:`TOKEN` (refs, imports)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and list(value) == ["Fn::Join"]:
        on, parts = value["Fn::Join"]
        return on.join(p if isinstance(p, str) else TOKEN for p in parts)
    return TOKEN


@pytest.fixture(scope="module")
def model(app_dev: Any) -> Template:
    return Template.from_stack(app_dev.built.model)


@pytest.fixture(scope="module")
def deployed(model: Template) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the pipeline resource's properties, its definition as SageMaker receives it)."""
    pipelines = model.find_resources("AWS::SageMaker::Pipeline")
    assert len(pipelines) == 1
    props = next(iter(pipelines.values()))["Properties"]
    body = _render(props["PipelineDefinition"]["PipelineDefinitionBody"])
    return props, json.loads(body)


def _role_of(model: Template, ref: Any) -> dict[str, Any]:
    logical = ref["Fn::GetAtt"][0]
    return model.find_resources("AWS::IAM::Role")[logical]


def test_the_deployed_definition_is_the_builders_and_valid(
    app_dev: Any, deployed: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    props, definition = deployed
    assert props["PipelineName"] == "oncopipe-dev-response"
    validate(definition)
    names = [s["Name"] for s in d.all_steps(definition["Steps"])]
    assert names == [d.COHORT, d.TUNE_OR_TRAIN, d.TUNE, "EvaluateTuned", "CheckAucTuned",
                     "RegisterTunedModel", "TunedAucBelowGate", d.TRAIN, d.EVALUATE, d.CHECK,
                     d.REGISTER, d.FAIL]  # fmt: skip
    parameters = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    assert parameters["Tune"] is False
    # the tuner's budget is the environment's
    tune = next(s for s in d.all_steps(definition["Steps"]) if s["Name"] == d.TUNE)
    limits = tune["Arguments"]["HyperParameterTuningJobConfig"]["ResourceLimits"]
    config = app_dev.built.config
    assert limits == {"MaxNumberOfTrainingJobs": config.tuning_max_jobs,
                      "MaxParallelTrainingJobs": config.tuning_parallel_jobs}  # fmt: skip
    assert tune["Arguments"]["TrainingJobDefinition"]["RoleArn"] == TOKEN
    # the gates come from the environment's lifecycle config
    lifecycle = app_dev.built.config.lifecycle
    assert parameters["MinAuc"] == lifecycle.auc_gate
    assert parameters["AucTolerance"] == lifecycle.auc_tolerance
    assert parameters["ApprovedAuc"] == 0.0


def test_each_step_runs_as_its_own_role_in_the_vpc_with_the_key(
    model: Template, deployed: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    _, definition = deployed
    steps = {s["Name"]: s for s in d.all_steps(definition["Steps"])}
    roles = {name: steps[name]["Arguments"]["RoleArn"] for name in (d.COHORT, d.TRAIN, d.EVALUATE)}
    # tokens only (the roles' ARNs): three distinct roles, none a literal
    assert set(roles.values()) == {TOKEN}
    train = steps[d.TRAIN]["Arguments"]
    assert train["EnableManagedSpotTraining"] is True
    assert train["OutputDataConfig"]["KmsKeyId"] == TOKEN
    assert train["VpcConfig"]["Subnets"] and train["VpcConfig"]["SecurityGroupIds"]
    evaluate = steps[d.EVALUATE]["Arguments"]
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["ProcessingInputs"]}
    assert inputs["histograms"].endswith("/genomics/vaf-histograms/")
    register = steps[d.REGISTER]["Arguments"]
    assert register["ModelApprovalStatus"] == "PendingManualApproval"
    assert register["CustomerMetadataProperties"]["artifact_sha256"] == {
        "Std:JsonGet": {"PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
                        "Path": "artifact.sha256"}}  # fmt: skip
    assert "ModelDataQuality" in register["ModelMetrics"]


def test_the_pipeline_role_starts_its_jobs_and_passes_only_their_roles(
    model: Template, deployed: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    props, _ = deployed
    role = _role_of(model, props["RoleArn"])
    assert role["Properties"]["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "sagemaker.amazonaws.com"
    }
    logical = props["RoleArn"]["Fn::GetAtt"][0]
    statements: list[dict[str, Any]] = []
    for policy in model.find_resources("AWS::IAM::Policy").values():
        if {"Ref": logical} in policy["Properties"]["Roles"]:
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                else s["Action"])}  # fmt: skip
    assert {"sagemaker:CreateProcessingJob", "sagemaker:CreateTrainingJob",
            "sagemaker:CreateHyperParameterTuningJob", "sagemaker:CreateModelPackage",
            "iam:PassRole"} <= actions  # fmt: skip
    tuning = next(s for s in statements if "sagemaker:CreateHyperParameterTuningJob" in s["Action"])
    assert json.dumps(tuning["Resource"]).endswith(':hyper-parameter-tuning-job/*"]]}')
    assert not any(a.endswith("*") and a.startswith("sagemaker:") for a in actions)
    passes = [s for s in statements if s["Action"] == "iam:PassRole"]
    assert len(passes) == 1 and len(passes[0]["Resource"]) == 3
    assert passes[0]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}
    }
    jobs = next(s for s in statements if "sagemaker:CreateTrainingJob" in s["Action"])
    assert all(str(r).endswith(("processing-job/pipelines-*", "training-job/pipelines-*"))
               or "pipelines-*" in json.dumps(r) for r in jobs["Resource"])  # fmt: skip


def test_the_evaluation_role_writes_reports_not_models(model: Template) -> None:
    roles = model.find_resources("AWS::IAM::Role")
    evaluation = [k for k in roles if k.startswith("EvaluationRole")]
    assert len(evaluation) == 1
    writes: list[str] = []
    for policy in model.find_resources("AWS::IAM::Policy").values():
        if {"Ref": evaluation[0]} not in policy["Properties"]["Roles"]:
            continue
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            if "s3:PutObject" in s["Action"]:
                writes.append(json.dumps(s["Resource"]))
    assert writes and all("/evaluation/*" in w for w in writes)
    assert not any("/models/" in w for w in writes)


def test_the_cohort_role_may_commit_its_build_manifest(model: Template) -> None:
    """processing.cohort commits through oncopipe.manifest: its manifest is written last."""
    from oncopipe.manifest import manifest_key

    roles = model.find_resources("AWS::IAM::Role")
    cohort = [k for k in roles if k.startswith("CohortRole")]
    assert len(cohort) == 1
    granted: dict[str, list[str]] = {}
    for policy in model.find_resources("AWS::IAM::Policy").values():
        if {"Ref": cohort[0]} not in policy["Properties"]["Roles"]:
            continue
        for s in policy["Properties"]["PolicyDocument"]["Statement"]:
            for action in [s["Action"]] if isinstance(s["Action"], str) else s["Action"]:
                granted.setdefault(action, []).append(json.dumps(s["Resource"]))
    key = manifest_key("build-1", "cohort", "dataset")
    prefix = key.split("/", 1)[0] + "/*"
    for action in ("s3:PutObject", "s3:GetObject"):
        assert any(prefix in r for r in granted[action]), f"cohort role lacks {action} on {key}"
