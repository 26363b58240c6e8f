"""The model pipeline as a SageMaker Pipeline definition (JSON, Version ``2020-12-01``).

Built without the SageMaker SDK (its pins conflict with ours and it calls AWS while it
builds): plain functions produce the documented definition format, so the stack can put
the JSON in ``AWS::SageMaker::Pipeline`` with CDK tokens in the settings, and
:mod:`oncopipe.pipeline.local_runner` can run the very same JSON on a laptop.

The pipeline (:func:`model_pipeline`):

1. ``Cohort`` (Processing, cached): ``python -m processing.cohort stage --build-id
   <CohortRunId>`` builds the training dataset into ``cohort/dataset/<CohortRunId>/`` of the
   curated bucket. The job commits its files through the S3 API (its manifest is the commit
   record), so its declared output ``dataset`` names that prefix for the steps after it.
2. ``TuneOrTrain`` (Condition on the ``Tune`` parameter, default false). SageMaker has no
   way to rejoin two branches, so the steps after training sit in each branch, the tuned
   ones with the suffix ``Tuned`` (``EvaluateTuned``, ``CheckAucTuned``...):

   - else (``Tune`` false): ``Train`` (Training, cached): script mode ``training/train.py``
     on that prefix as channel ``train``; Managed Spot Training with checkpoints in S3,
     VPC, volume and output KMS;
   - if: ``Tune`` (Tuning): a hyperparameter tuning job (Bayesian, maximising
     ``validation:auc`` over :data:`TUNING_RANGES`) of the same training job definition;
     its best training job's ``model.tar.gz`` goes on
     (``<S3OutputPath>/<BestTrainingJob.TrainingJobName>/output/model.tar.gz``). Every trial
     is a script-mode run like ``Train``, so each logs its own MLflow run.
3. ``Evaluate`` (Processing): ``python -m training.evaluate score`` on the model artifact,
   the dataset's test split and the per-sample VAF histograms; writes ``evaluation.json``
   (property file ``EvaluationReport``: the test AUC, the approved model's AUC minus
   tolerance, the artefact's SHA-256) and ``baseline.json`` (the drift baseline of the
   training patients) under ``evaluation/<execution>/`` of the artifacts bucket.
4. ``CheckAuc`` (Condition): AUC >= ``MinAuc`` and AUC >= approved AUC - ``AucTolerance``
   -> ``RegisterModel`` (PendingManualApproval; model metrics = the evaluation report and,
   as data-quality statistics, the baseline; ``artifact_sha256`` in the customer metadata),
   else ``AucBelowGate`` (Fail, the message names the AUC and both gates).

Expressions follow the definition format: ``{"Get": "Parameters.X"}``,
``{"Get": "Steps.S.<property path>"}``, ``{"Get": "Execution.PipelineExecutionId"}``,
``{"Std:Join": {"On": s, "Values": [...]}}`` and ``{"Std:JsonGet": {"PropertyFile":
{"Get": "Steps.S.PropertyFiles.F"}, "Path": p}}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from oncopipe import layout
from oncopipe.ops.cost import ENV_SM_MANAGED_SPOT
from oncopipe.pipeline.builder import (
    EXECUTION_VARIABLES as EXECUTION_VARIABLES,
    PARAMETER_TYPES as PARAMETER_TYPES,
    VERSION as VERSION,
    DefinitionError as DefinitionError,
    Parameter as Parameter,
    PropertyFile as PropertyFile,
    Step as Step,
    all_steps as all_steps,
    best_model_artifacts as best_model_artifacts,
    build_definition as build_definition,
    check_references as check_references,
    compare as compare,
    condition_step as condition_step,
    execution as execution,
    get as get,
    iter_expressions as iter_expressions,
    join as join,
    json_get as json_get,
    model_artifacts as model_artifacts,
    param as param,
    processing_output_uri as processing_output_uri,
    referenced_steps as referenced_steps,
)
from oncopipe.settings import BUCKET_ENV

# step names: the ones :func:`model_pipeline` uses (Get references spell them)
COHORT = "Cohort"
TRAIN = "Train"
EVALUATE = "Evaluate"
CHECK = "CheckAuc"
REGISTER = "RegisterModel"
FAIL = "AucBelowGate"
TUNE_OR_TRAIN = "TuneOrTrain"
TUNE = "Tune"
#: The suffix of the steps after the tuning step (step names are unique in a pipeline).
TUNED = "Tuned"
EVALUATION_REPORT = "EvaluationReport"
EVALUATION_FILE = "evaluation.json"
#: Where evaluation.json keeps what the condition reads (:func:`training.evaluate.score`).
AUC_PATH = "metrics.auc"
APPROVED_FLOOR_PATH = "comparison.approved_floor"
ARTIFACT_SHA256_PATH = "artifact.sha256"
#: The model package's CustomerMetadataProperties key of the artefact's SHA-256.
ARTIFACT_SHA256 = "artifact_sha256"
#: The drift baseline the evaluation step writes beside evaluation.json.
BASELINE_FILE = "baseline.json"
PROCESSING_INPUT = "/opt/ml/processing/input"
PROCESSING_OUTPUT = "/opt/ml/processing/output"


# -- the model pipeline ---------------------------------------------------------------------
#: Default hyperparameters of the training step (strings, as SageMaker passes them).
DEFAULT_HYPERPARAMETERS: dict[str, str] = {
    "epochs": "16",
    "batch-size": "32",
    "lr": "0.003",
    "d-model": "32",
    "layers": "3",
    "heads": "2",
    "dropout": "0.0",
    "modality-dropout": "0.15",
    "seed": "0",
    "package": "true",
}


#: What the tuning step searches (the other hyperparameters stay at their defaults).
TUNING_RANGES: dict[str, list[dict[str, Any]]] = {
    "ContinuousParameterRanges": [
        {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.01", "ScalingType": "Logarithmic"},
        {"Name": "radiomic-noise", "MinValue": "0.25", "MaxValue": "1.5", "ScalingType": "Linear"},
    ],
    "CategoricalParameterRanges": [
        {"Name": "d-model", "Values": ["32", "64", "128"]},
        {"Name": "layers", "Values": ["1", "2", "3"]},
    ],
}


#: The metric the tuner maximises (a :data:`METRIC_DEFINITIONS` name).
TUNING_OBJECTIVE = "validation:auc"
#: Set in a tuning trial's environment: train.py keeps its checkpoint in a folder of the
#: trial's own job name, so trials never resume from each other's (other hyperparameters).
CHECKPOINT_PER_JOB_ENV = "ONCOPIPE_CHECKPOINT_PER_JOB"
#: What SageMaker reads from the training log (train.py prints ``val_auc=...``).
METRIC_DEFINITIONS = (
    {"Name": "validation:auc", "Regex": "val_auc=([0-9.]+)"},
    {"Name": "train:loss", "Regex": " loss=([0-9.]+)"},
)


@dataclass(frozen=True)
class PipelineSettings:
    """What the definition needs from the deployment; any string may be a CDK token.

    Role ARNs: ``cohort_role_arn`` runs the cohort job, ``training_role_arn`` the training
    job, ``evaluation_role_arn`` the evaluation job (reads the model and the dataset, writes
    under ``evaluation/``). ``kms_key_arn`` encrypts job volumes and outputs.
    """

    curated_bucket: str
    artifacts_bucket: str
    cohort_role_arn: str
    training_role_arn: str
    evaluation_role_arn: str
    processing_image_uri: str
    training_image_uri: str
    inference_image_uri: str
    kms_key_arn: str
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]
    model_package_group_name: str
    project: str = "oncopipe"
    processing_instance_type: str = "ml.m5.xlarge"
    training_instance_type: str = "ml.m5.xlarge"
    serving_instance_type: str = "ml.m5.large"
    processing_volume_gb: int = 30
    training_volume_gb: int = 30
    processing_max_runtime_s: int = 3600
    training_max_runtime_s: int = 4 * 3600
    training_spot: bool = True
    training_max_wait_s: int = 8 * 3600
    min_auc: float = 0.85
    approved_auc: float = 0.0
    auc_tolerance: float = 0.02
    cohort_run_id: str = "latest"
    hyperparameters: Mapping[str, str] = field(
        default_factory=lambda: dict(DEFAULT_HYPERPARAMETERS)
    )
    #: More environment of the cohort job (``FEATURE_GROUP_NAME`` with
    #: ``lifecycle.feature_store``: the job then publishes the dataset to that group).
    cohort_environment: Mapping[str, str] = field(default_factory=dict)
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "oncopipe-response"
    cache_expire_after: str = "P30D"
    #: The tuning step's trials in all and at once (``tuning_max_jobs`` and
    #: ``tuning_parallel_jobs`` of the config).
    tuning_max_jobs: int = 8
    tuning_parallel_jobs: int = 2

    def __post_init__(self) -> None:
        if not self.subnet_ids or not self.security_group_ids:
            raise DefinitionError("jobs run in the VPC: subnet_ids and security_group_ids")
        if self.training_spot and self.training_max_wait_s < self.training_max_runtime_s:
            raise DefinitionError(
                "spot training: training_max_wait_s must be >= training_max_runtime_s"
            )
        if not 1 <= self.tuning_parallel_jobs <= self.tuning_max_jobs:
            raise DefinitionError("tuning: 1 <= tuning_parallel_jobs <= tuning_max_jobs")


def _vpc(s: PipelineSettings) -> dict[str, Any]:
    return {"SecurityGroupIds": list(s.security_group_ids), "Subnets": list(s.subnet_ids)}


def _processing_args(
    s: PipelineSettings,
    *,
    role: str,
    image: str,
    module: str,
    arguments: list[Any],
    environment: dict[str, Any],
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
) -> dict[str, Any]:
    """CreateProcessingJob arguments (without the job name) of a ``python -m`` job."""
    args: dict[str, Any] = {
        "RoleArn": role,
        "AppSpecification": {
            "ImageUri": image,
            "ContainerEntrypoint": ["python", "-m", module],
            "ContainerArguments": arguments,
        },
        "ProcessingResources": {
            "ClusterConfig": {
                "InstanceCount": 1,
                "InstanceType": param("ProcessingInstanceType"),
                "VolumeSizeInGB": s.processing_volume_gb,
                "VolumeKmsKeyId": s.kms_key_arn,
            }
        },
        "NetworkConfig": {
            "EnableInterContainerTrafficEncryption": True,
            "EnableNetworkIsolation": False,
            "VpcConfig": _vpc(s),
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": s.processing_max_runtime_s},
        "Environment": environment,
    }
    if inputs:
        args["ProcessingInputs"] = inputs
    if outputs:
        args["ProcessingOutputConfig"] = {"Outputs": outputs, "KmsKeyId": s.kms_key_arn}
    return args


def _s3_input(name: str, uri: Any, local: str) -> dict[str, Any]:
    return {
        "InputName": name,
        "AppManaged": False,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": local,
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
        },
    }


def _s3_output(name: str, uri: Any, local: str) -> dict[str, Any]:
    return {
        "OutputName": name,
        "AppManaged": False,
        "S3Output": {"S3Uri": uri, "LocalPath": local, "S3UploadMode": "EndOfJob"},
    }


def _cohort(s: PipelineSettings) -> Step:
    curated_env = BUCKET_ENV["curated"]
    if curated_env in s.cohort_environment:
        raise DefinitionError(f"cohort_environment: {curated_env} is the curated_bucket setting")
    # the trailing "/" matters: as an S3 prefix, build-1 would also match build-10/
    dataset = join(
        [f"s3://{s.curated_bucket}/{layout.CURATED_COHORT_DATASET}", param("CohortRunId"), "/"]
    )
    args = _processing_args(
        s,
        role=s.cohort_role_arn,
        image=s.processing_image_uri,
        module="processing.cohort",
        arguments=["stage", "--build-id", param("CohortRunId")],
        environment={**s.cohort_environment, curated_env: s.curated_bucket},
        inputs=[],
        # the job commits the dataset through the S3 API (manifest last); the declared
        # output names the prefix for the steps after it and its local folder stays empty
        outputs=[_s3_output("dataset", dataset, f"{PROCESSING_OUTPUT}/dataset")],
    )
    return Step(
        COHORT,
        "Processing",
        args,
        cache_expire_after=s.cache_expire_after,
        description="curated feature tables and labels -> the cohort training dataset",
    )


def _models_path(s: PipelineSettings) -> str:
    return f"s3://{s.artifacts_bucket}/{layout.ARTIFACTS_MODELS}"


def _training_job(s: PipelineSettings, *, checkpoints: str) -> dict[str, Any]:
    """The training job's request without hyperparameters (shared by Train and Tune)."""
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": s.training_max_runtime_s}
    if s.training_spot:
        stopping["MaxWaitTimeInSeconds"] = s.training_max_wait_s
    environment = {
        "SAGEMAKER_PROGRAM": "training/train.py",
        # the cost estimate's lifecycle (SageMaker does not tell the container)
        ENV_SM_MANAGED_SPOT: "true" if s.training_spot else "false",
    }
    if s.mlflow_tracking_uri:
        environment["MLFLOW_TRACKING_URI"] = s.mlflow_tracking_uri
        environment["MLFLOW_EXPERIMENT_NAME"] = s.mlflow_experiment
    return {
        "AlgorithmSpecification": {
            "TrainingImage": s.training_image_uri,
            "TrainingInputMode": "File",
            "MetricDefinitions": [dict(m) for m in METRIC_DEFINITIONS],
        },
        "RoleArn": s.training_role_arn,
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": processing_output_uri(COHORT, "dataset"),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": _models_path(s), "KmsKeyId": s.kms_key_arn},
        "ResourceConfig": {
            "InstanceCount": 1,
            "InstanceType": param("TrainingInstanceType"),
            "VolumeSizeInGB": s.training_volume_gb,
            "VolumeKmsKeyId": s.kms_key_arn,
        },
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": s.training_spot,
        "CheckpointConfig": {
            # per cohort build: a spot interruption resumes from the same build's checkpoint
            "S3Uri": join(
                [
                    f"s3://{s.artifacts_bucket}/{layout.ARTIFACTS_CHECKPOINTS}",
                    param("CohortRunId"),
                    "/",
                    execution("PipelineExecutionId"),
                    checkpoints,
                ]
            ),
            "LocalPath": "/opt/ml/checkpoints",
        },
        "VpcConfig": _vpc(s),
        "EnableInterContainerTrafficEncryption": True,
        "EnableNetworkIsolation": False,
        "Environment": environment,
    }


def _train(s: PipelineSettings) -> Step:
    args = {**_training_job(s, checkpoints="/"), "HyperParameters": dict(s.hyperparameters)}
    return Step(
        TRAIN,
        "Training",
        args,
        cache_expire_after=s.cache_expire_after,
        description="script-mode training of the multimodal response model",
    )


def _tune(s: PipelineSettings) -> Step:
    job = _training_job(s, checkpoints="/tune/")
    tuned = {r["Name"] for ranges in TUNING_RANGES.values() for r in ranges}
    definition = {
        **job,
        "StaticHyperParameters": {k: v for k, v in s.hyperparameters.items() if k not in tuned},
        "Environment": {**job["Environment"], CHECKPOINT_PER_JOB_ENV: "true"},
    }
    args = {
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "HyperParameterTuningJobObjective": {
                "Type": "Maximize",
                "MetricName": TUNING_OBJECTIVE,
            },
            "ResourceLimits": {
                "MaxNumberOfTrainingJobs": s.tuning_max_jobs,
                "MaxParallelTrainingJobs": s.tuning_parallel_jobs,
            },
            "ParameterRanges": TUNING_RANGES,
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": definition,
    }
    return Step(
        TUNE,
        "Tuning",
        args,
        cache_expire_after=s.cache_expire_after,
        description="hyperparameter tuning (Bayesian, validation AUC) of the response model",
    )


def _evaluate(s: PipelineSettings, *, model: Any, suffix: str = "") -> Step:
    model_in = f"{PROCESSING_INPUT}/model"
    data_in = f"{PROCESSING_INPUT}/dataset"
    histograms_in = f"{PROCESSING_INPUT}/histograms"
    out = f"{PROCESSING_OUTPUT}/evaluation"
    # no trailing "/": the register step joins the file name on "/"
    report = join(
        [
            f"s3://{s.artifacts_bucket}/{layout.ARTIFACTS_EVALUATION}",
            execution("PipelineExecutionId"),
        ]
    )  # one of the two evaluate steps runs in an execution: the same folder
    args = _processing_args(
        s,
        role=s.evaluation_role_arn,
        image=s.training_image_uri,
        module="training.evaluate",
        arguments=[
            "score",
            "--model",
            model_in,
            "--dataset",
            data_in,
            "--out",
            out,
            "--approved-auc",
            param("ApprovedAuc"),
            "--tolerance",
            param("AucTolerance"),
            "--histograms",
            histograms_in,
        ],
        environment={},
        inputs=[
            _s3_input("model", model, model_in),
            _s3_input("dataset", processing_output_uri(COHORT, "dataset"), data_in),
            # the per-sample VAF histograms: the baseline sums the training patients' ones
            _s3_input(
                "histograms",
                f"s3://{s.curated_bucket}/{layout.CURATED_GENOMICS_VAF_HISTOGRAMS}",
                histograms_in,
            ),
        ],
        outputs=[_s3_output("evaluation", report, out)],
    )
    return Step(
        EVALUATE + suffix,
        "Processing",
        args,
        property_files=(PropertyFile(EVALUATION_REPORT, "evaluation", EVALUATION_FILE),),
        description="test-split AUC of the trained model and the approved model's floor",
    )


def _register(s: PipelineSettings, *, model: Any, suffix: str = "") -> Step:
    evaluate = EVALUATE + suffix
    report = join([processing_output_uri(evaluate, "evaluation"), EVALUATION_FILE], on="/")
    baseline = join([processing_output_uri(evaluate, "evaluation"), BASELINE_FILE], on="/")
    container = {
        "Image": s.inference_image_uri,
        "ModelDataUrl": model,
        # the training image serves (training/serve.py); the endpoint serves the pruned model
        "Environment": {"ONCOPIPE_MODEL_VARIANT": "pruned"},
    }
    args = {
        "ModelPackageGroupName": s.model_package_group_name,
        "ModelPackageDescription": join(
            [
                "pipeline execution ",
                execution("PipelineExecutionId"),
                ", cohort ",
                param("CohortRunId"),
            ]
        ),
        "ModelApprovalStatus": "PendingManualApproval",
        # deployment hashes the artefact again and refuses one that differs
        "CustomerMetadataProperties": {
            ARTIFACT_SHA256: json_get(evaluate, EVALUATION_REPORT, ARTIFACT_SHA256_PATH),
            "cohort_run_id": param("CohortRunId"),
        },
        "InferenceSpecification": {
            "Containers": [container],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
            "SupportedRealtimeInferenceInstanceTypes": [s.serving_instance_type],
            "SupportedTransformInstanceTypes": [s.processing_instance_type],
        },
        "ModelMetrics": {
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": report}},
            # the drift baseline (oncopipe.monitor.baseline): published when approved
            "ModelDataQuality": {
                "Statistics": {"ContentType": "application/json", "S3Uri": baseline}
            },
        },
    }
    name = REGISTER.replace("Model", f"{suffix}Model") if suffix else REGISTER
    return Step(name, "RegisterModel", args, description="the model version, for approval")


def _fail(suffix: str = "") -> Step:
    evaluate = EVALUATE + suffix
    auc = json_get(evaluate, EVALUATION_REPORT, AUC_PATH)
    floor = json_get(evaluate, EVALUATION_REPORT, APPROVED_FLOOR_PATH)
    message = join(
        ["model not registered: test AUC ", auc, " is below the gate (MinAuc ",
         param("MinAuc"), ", approved AUC - tolerance ", floor, ")"]
    )  # fmt: skip
    return Step(f"{suffix}{FAIL}", "Fail", {"ErrorMessage": message})


def model_parameters(s: PipelineSettings) -> list[Parameter]:
    """The pipeline's parameters, with the settings' values as defaults."""
    return [
        Parameter("ProcessingInstanceType", "String", s.processing_instance_type),
        Parameter("TrainingInstanceType", "String", s.training_instance_type),
        Parameter("CohortRunId", "String", s.cohort_run_id),
        Parameter("MinAuc", "Float", float(s.min_auc)),
        Parameter("ApprovedAuc", "Float", float(s.approved_auc)),
        Parameter("AucTolerance", "Float", float(s.auc_tolerance)),
        Parameter("Tune", "Boolean", False),
    ]


def _gate(s: PipelineSettings, *, model: Any, suffix: str = "") -> list[Step]:
    """Evaluate -> CheckAuc -> RegisterModel | AucBelowGate of one branch's model."""
    evaluate = EVALUATE + suffix
    auc = json_get(evaluate, EVALUATION_REPORT, AUC_PATH)
    check = condition_step(
        CHECK + suffix,
        [
            compare("GreaterThanOrEqualTo", auc, param("MinAuc")),
            compare(
                "GreaterThanOrEqualTo",
                auc,
                json_get(evaluate, EVALUATION_REPORT, APPROVED_FLOOR_PATH),
            ),
        ],
        if_steps=[_register(s, model=model, suffix=suffix)],
        else_steps=[_fail(suffix)],
    )
    return [_evaluate(s, model=model, suffix=suffix), check]


def model_pipeline(s: PipelineSettings) -> dict[str, Any]:
    """Return the model pipeline's definition (see the module docstring).

    Raises:
        DefinitionError: the definition is inconsistent (a bug, not a user error).
    """
    branches = condition_step(
        TUNE_OR_TRAIN,
        [compare("Equals", param("Tune"), True)],
        if_steps=[_tune(s), *_gate(s, model=best_model_artifacts(TUNE, _models_path(s)),
                                   suffix=TUNED)],
        else_steps=[_train(s), *_gate(s, model=model_artifacts(TRAIN))],
    )  # fmt: skip
    return build_definition(model_parameters(s), [_cohort(s), branches])


def to_json(definition: Mapping[str, Any]) -> str:
    """Return the definition as the JSON string ``AWS::SageMaker::Pipeline`` takes."""
    return json.dumps(definition, sort_keys=True, separators=(",", ":"))
