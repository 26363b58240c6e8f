"""The model pipeline's SageMaker Pipeline definition: shape, validation, references."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from oncopipe.pipeline import definition as d
from oncopipe.pipeline.local_runner import LocalPipelineRunner, evaluate_condition
from oncopipe.pipeline.validate import (
    RELAXATIONS,
    SCHEMA,
    ValidationError,
    substitute,
    validate,
    validate_step_arguments,
)

ACCOUNT = "123456789012"
KEY = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/1111aaaa-2222-3333-4444-555566667777"

#: Every change made to a step's arguments before botocore validates them. A new kind of
#: substitution must be added here, documented, or this test fails.
DOCUMENTED_RELAXATIONS = (
    # expressions are resolved at run time; the service model sees a value of its type
    "an expression ({'Get': ...}, {'Std:Join': ...}, {'Std:JsonGet': ...}) in a string "
    "member becomes the string 'placeholder-expression'",
    "an expression in an integer or long member becomes 1",
    "an expression in a float or double member becomes 1.0",
    "an expression in a boolean member becomes True",
    # the pipeline names its jobs; the API requires a name
    "Processing: ProcessingJobName (required by the API, chosen by the pipeline) is added "
    "as 'placeholder-job-name'",
    "Training: TrainingJobName (required by the API, chosen by the pipeline) is added as "
    "'placeholder-job-name'",
    "Tuning: HyperParameterTuningJobName (required by the API, chosen by the pipeline) is "
    "added as 'placeholder-tuning'",
)


def settings(**overrides: Any) -> d.PipelineSettings:
    values: dict[str, Any] = {
        "curated_bucket": "onco-dev-curated",
        "artifacts_bucket": "onco-dev-artifacts",
        "cohort_role_arn": f"arn:aws:iam::{ACCOUNT}:role/cohort",
        "training_role_arn": f"arn:aws:iam::{ACCOUNT}:role/training",
        "evaluation_role_arn": f"arn:aws:iam::{ACCOUNT}:role/evaluation",
        "processing_image_uri": f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/features:1",
        "training_image_uri": f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/training:1",
        "inference_image_uri": "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch:2",
        "kms_key_arn": KEY,
        "subnet_ids": ("subnet-0a", "subnet-0b"),
        "security_group_ids": ("sg-0c",),
        "model_package_group_name": "onco-dev-response",
    }
    values.update(overrides)
    return d.PipelineSettings(**values)


@pytest.fixture
def definition() -> dict[str, Any]:
    return d.model_pipeline(settings())


def steps(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {str(s["Name"]): dict(s) for s in d.all_steps(definition["Steps"])}


def step_in(definition: dict[str, Any], name: str) -> dict[str, Any]:
    """The step ``name`` itself (not a copy), wherever it is nested."""
    found: dict[str, Any] = next(s for s in d.all_steps(definition["Steps"]) if s["Name"] == name)
    return found


def test_model_pipeline_validates_against_schema_and_service_model(
    definition: dict[str, Any],
) -> None:
    validate(definition)
    assert definition["Version"] == "2020-12-01"
    assert [s["Name"] for s in definition["Steps"]] == ["Cohort", "TuneOrTrain"]
    branches = definition["Steps"][1]["Arguments"]
    assert branches["Conditions"] == [
        {"Type": "Equals", "LeftValue": {"Get": "Parameters.Tune"}, "RightValue": True}
    ]
    assert [s["Name"] for s in branches["IfSteps"]] == ["Tune", "EvaluateTuned", "CheckAucTuned"]
    assert [s["Name"] for s in branches["ElseSteps"]] == ["Train", "Evaluate", "CheckAuc"]
    kinds = {p["Name"]: p["Type"] for p in definition["Parameters"]}
    assert kinds == {
        "ProcessingInstanceType": "String",
        "TrainingInstanceType": "String",
        "CohortRunId": "String",
        "MinAuc": "Float",
        "ApprovedAuc": "Float",
        "AucTolerance": "Float",
        "Tune": "Boolean",
    }
    tune = next(p for p in definition["Parameters"] if p["Name"] == "Tune")
    assert tune["DefaultValue"] is False  # a retrain trains with the default hyperparameters
    # the same settings give the same JSON (the stack's template stays stable)
    assert d.to_json(definition) == d.to_json(d.model_pipeline(settings()))
    json.loads(d.to_json(definition))


def test_training_step_is_spot_checkpointed_in_the_vpc_and_encrypted(
    definition: dict[str, Any],
) -> None:
    train = steps(definition)["Train"]
    args = train["Arguments"]
    assert train["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}
    assert args["EnableManagedSpotTraining"] is True
    assert (
        args["StoppingCondition"]["MaxWaitTimeInSeconds"]
        >= (args["StoppingCondition"]["MaxRuntimeInSeconds"])
    )
    assert args["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert args["CheckpointConfig"]["S3Uri"]["Std:Join"]["Values"][0] == (
        "s3://onco-dev-artifacts/checkpoints/"
    )
    assert args["VpcConfig"] == {
        "SecurityGroupIds": ["sg-0c"],
        "Subnets": ["subnet-0a", "subnet-0b"],
    }
    assert args["ResourceConfig"]["VolumeKmsKeyId"] == KEY
    assert args["OutputDataConfig"]["KmsKeyId"] == KEY
    assert args["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    channel = args["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"]
    assert channel == {
        "Get": "Steps.Cohort.ProcessingOutputConfig.Outputs['dataset'].S3Output.S3Uri"
    }
    without_spot = steps(d.model_pipeline(settings(training_spot=False)))["Train"]["Arguments"]
    assert without_spot["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in without_spot["StoppingCondition"]


def test_gate_registers_pending_approval_else_fails_naming_the_auc(
    definition: dict[str, Any],
) -> None:
    all_ = steps(definition)
    assert all_["Cohort"]["CacheConfig"]["Enabled"] is True
    assert all_["Evaluate"]["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation",
         "FilePath": "evaluation.json"}
    ]  # fmt: skip
    check = all_["CheckAuc"]["Arguments"]
    auc = {
        "Std:JsonGet": {
            "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
            "Path": "metrics.auc",
        }
    }
    left = [c["LeftValue"] for c in check["Conditions"]]
    rights = [c["RightValue"] for c in check["Conditions"]]
    assert [c["Type"] for c in check["Conditions"]] == ["GreaterThanOrEqualTo"] * 2
    assert left == [auc, auc]
    assert rights[0] == {"Get": "Parameters.MinAuc"}
    assert rights[1]["Std:JsonGet"]["Path"] == "comparison.approved_floor"
    assert [s["Name"] for s in check["IfSteps"]] == ["RegisterModel"]
    assert [s["Name"] for s in check["ElseSteps"]] == ["AucBelowGate"]
    register = all_["RegisterModel"]["Arguments"]
    assert register["ModelApprovalStatus"] == "PendingManualApproval"
    assert register["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == {
        "Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"
    }
    report = register["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]["Std:Join"]
    assert report["Values"] == [
        {"Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"},
        "evaluation.json",
    ]
    message = all_["AucBelowGate"]["Arguments"]["ErrorMessage"]["Std:Join"]["Values"]
    assert auc in message


def test_tuning_branch_tunes_the_same_job_and_gates_the_best_model(
    definition: dict[str, Any],
) -> None:
    all_ = steps(definition)
    tune = all_["Tune"]
    assert tune["Type"] == "Tuning" and tune["CacheConfig"]["Enabled"] is True
    config = tune["Arguments"]["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == "Bayesian"
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize", "MetricName": "validation:auc"}  # fmt: skip
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 8, "MaxParallelTrainingJobs": 2}
    tuned = {r["Name"] for ranges in config["ParameterRanges"].values() for r in ranges}
    assert tuned == {"lr", "radiomic-noise", "d-model", "layers"}
    job = tune["Arguments"]["TrainingJobDefinition"]
    # the tuned values are not also passed as static ones (the tuner refuses that)
    assert not tuned & set(job["StaticHyperParameters"])
    assert job["StaticHyperParameters"]["epochs"] == d.DEFAULT_HYPERPARAMETERS["epochs"]
    # the trial is the Train step's job: same image, role, data, VPC, keys, spot
    train = all_["Train"]["Arguments"]
    for key in ("AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig",
                "ResourceConfig", "StoppingCondition", "EnableManagedSpotTraining", "VpcConfig",
                "EnableInterContainerTrafficEncryption"):  # fmt: skip
        assert job[key] == train[key], key
    # trials share the step's checkpoint prefix and keep a folder per job (train.py)
    assert job["Environment"][d.CHECKPOINT_PER_JOB_ENV] == "true"
    assert d.CHECKPOINT_PER_JOB_ENV not in train["Environment"]
    assert job["CheckpointConfig"]["S3Uri"]["Std:Join"]["Values"][-1] == "/tune/"
    # the best trial's artefact is evaluated and registered
    name = {"Get": "Steps.Tune.BestTrainingJob.TrainingJobName"}
    best = {"Std:Join": {"On": "/", "Values": [
        "s3://onco-dev-artifacts/models", name, "output", "model.tar.gz"]}}  # fmt: skip
    model_in = all_["EvaluateTuned"]["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"]
    assert model_in == best
    register = all_["RegisterTunedModel"]["Arguments"]
    assert register["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == best
    sha = register["CustomerMetadataProperties"]["artifact_sha256"]["Std:JsonGet"]
    assert sha["PropertyFile"] == {"Get": "Steps.EvaluateTuned.PropertyFiles.EvaluationReport"}
    check = all_["CheckAucTuned"]["Arguments"]
    assert [s["Name"] for s in check["IfSteps"]] == ["RegisterTunedModel"]
    assert [s["Name"] for s in check["ElseSteps"]] == ["TunedAucBelowGate"]
    limited = steps(d.model_pipeline(settings(tuning_max_jobs=3, tuning_parallel_jobs=3)))
    limits = limited["Tune"]["Arguments"]["HyperParameterTuningJobConfig"]["ResourceLimits"]
    assert limits == {"MaxNumberOfTrainingJobs": 3, "MaxParallelTrainingJobs": 3}
    with pytest.raises(d.DefinitionError, match="tuning_parallel_jobs"):
        settings(tuning_max_jobs=2, tuning_parallel_jobs=3)


def test_every_substitution_is_a_documented_relaxation() -> None:
    assert RELAXATIONS == DOCUMENTED_RELAXATIONS


def test_substitution_follows_the_service_model_types(definition: dict[str, Any]) -> None:
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.operation_model("CreateProcessingJob").input_shape
    cohort = steps(definition)["Cohort"]["Arguments"]
    cohort["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] = {"Get": "Parameters.X"}
    out = substitute(cohort, shape)
    assert out["ProcessingResources"]["ClusterConfig"]["VolumeSizeInGB"] == 1
    assert out["ProcessingResources"]["ClusterConfig"]["InstanceType"] == ("placeholder-expression")
    assert out["AppSpecification"]["ContainerArguments"][2] == "placeholder-expression"
    # an expression where the model wants a structure is an error, not a silent pass
    cohort["ProcessingResources"]["ClusterConfig"] = {"Get": "Parameters.X"}
    with pytest.raises(ValidationError, match="structure"):
        substitute(cohort, shape)


@pytest.mark.parametrize(
    ("step", "path", "value", "message"),
    [
        ("Cohort", ("ProcessingResources", "ClusterConfig", "VolumeSizeInGB"), "30",
         "VolumeSizeInGB"),
        ("Train", ("Bogus",), 1, 'Unknown parameter in input: "Bogus"'),
        ("Train", ("EnableManagedSpotTraining",), "yes", "EnableManagedSpotTraining"),
        ("RegisterModel", ("ModelApprovalStatus",), 5, "ModelApprovalStatus"),
        ("Evaluate", ("ProcessingInputs", 0, "S3Input", "S3DataType"), None, "S3DataType"),
        ("Tune", ("HyperParameterTuningJobConfig", "ResourceLimits", "MaxNumberOfTrainingJobs"),
         "8", "MaxNumberOfTrainingJobs"),
        ("Tune", ("TrainingJobDefinition", "HyperParameters"), {}, "HyperParameters"),
    ],
)  # fmt: skip
def test_service_model_rejects_bad_arguments(
    definition: dict[str, Any], step: str, path: tuple[Any, ...], value: Any, message: str
) -> None:
    target = steps(definition)[step]
    holder: Any = target["Arguments"]
    for part in path[:-1]:
        holder = holder[part]
    if value is None:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    with pytest.raises(ValidationError, match=message):
        validate_step_arguments(target)


def _mutated(definition: dict[str, Any], change: str) -> dict[str, Any]:
    out = copy.deepcopy(definition)
    check = step_in(out, "CheckAuc")
    if change == "version":
        out["Version"] = "2019-01-01"
    elif change == "parameter-type":
        out["Parameters"][3]["DefaultValue"] = "high"
    elif change == "condition-type":
        check["Arguments"]["Conditions"][0]["Type"] = "Ge"
    elif change == "fail-message":
        del check["Arguments"]["ElseSteps"][0]["Arguments"]["ErrorMessage"]
    elif change == "step-type":
        out["Steps"][0]["Type"] = "Lambda"
    elif change == "cache-on-condition":
        check["CacheConfig"] = {"Enabled": True}
    return out


@pytest.mark.parametrize(
    "change",
    ["version", "parameter-type", "condition-type", "fail-message", "step-type",
     "cache-on-condition"],
)  # fmt: skip
def test_top_level_schema_rejects(definition: dict[str, Any], change: str) -> None:
    with pytest.raises(ValidationError, match="pipeline definition at"):
        validate(_mutated(definition, change))


def test_schema_is_ours_not_the_published_one() -> None:
    # written from the documentation: no $id pointing at the unlicensed repository
    assert "$id" not in SCHEMA
    assert "aws-sagemaker-mlops" not in json.dumps(SCHEMA)


def test_reference_to_an_unknown_step_is_refused() -> None:
    bad = d.Step(
        "Evaluate2",
        "Processing",
        {"ProcessingInputs": [{"S3Input": {"S3Uri": d.model_artifacts("Trian")}}]},
    )
    with pytest.raises(d.DefinitionError, match=r"'Trian' is not a step of this pipeline"):
        d.build_definition([], [bad])
    # a hand-edited definition is refused by the runner too, before anything runs
    definition = d.model_pipeline(settings())
    step_in(definition, "Evaluate")["Arguments"]["ProcessingInputs"][0]["S3Input"]["S3Uri"] = {
        "Get": "Steps.Tran.ModelArtifacts.S3ModelArtifacts"
    }
    with pytest.raises(d.DefinitionError, match=r"step Evaluate reads Steps\.Tran\..*Cohort"):
        LocalPipelineRunner(definition, store=None, work_dir=".", artifacts_bucket="a")


def test_unknown_parameter_property_file_and_dependency_are_refused() -> None:
    uses = d.Step("A", "Fail", {"ErrorMessage": d.param("Missing")})
    with pytest.raises(d.DefinitionError, match=r"Parameters\.Missing.*parameters: Known"):
        d.build_definition([d.Parameter("Known", "String", "x")], [uses])
    source = d.Step("Src", "Processing", {})
    reads = d.Step("B", "Fail", {"ErrorMessage": d.json_get("Src", "Nope", "a")})
    with pytest.raises(d.DefinitionError, match="declares no property file 'Nope'"):
        d.build_definition([], [source, reads])
    waits = d.Step("C", "Fail", {"ErrorMessage": "x"}, depends_on=("Ghost",))
    with pytest.raises(d.DefinitionError, match="depends on 'Ghost'"):
        d.build_definition([], [waits])
    with pytest.raises(d.DefinitionError, match="not a Float"):
        d.Parameter("MinAuc", "Float", "0.8")


def test_settings_pass_cdk_tokens_through() -> None:
    token = "${Token[TOKEN.123]}"
    definition = d.model_pipeline(settings(curated_bucket=token, kms_key_arn=token))
    cohort = steps(definition)["Cohort"]["Arguments"]
    assert cohort["Environment"] == {"CURATED_BUCKET": token}
    assert cohort["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == token
    with pytest.raises(d.DefinitionError, match="subnet_ids"):
        settings(subnet_ids=())


def test_condition_operators() -> None:
    def value(v: Any) -> Any:
        return v

    ge = d.compare("GreaterThanOrEqualTo", 0.8, 0.8)
    assert evaluate_condition(ge, value)
    assert not evaluate_condition({"Type": "Not", "Expression": ge}, value)
    assert evaluate_condition(
        {"Type": "Or", "Conditions": [d.compare("LessThan", 2, 1), d.compare("Equals", "a", "a")]},
        value,
    )
    assert evaluate_condition({"Type": "In", "QueryValue": 2, "Values": [1, 2]}, value)
    assert not evaluate_condition(d.compare("GreaterThan", 1, 1.5), value)
    with pytest.raises(ValueError, match="cannot compare"):
        evaluate_condition(d.compare("GreaterThan", "0.9", 0.5), value)
