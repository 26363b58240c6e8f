"""The multimodal model: dataset, training, tuning, registry, tracking, batch transform, serving."""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    Aspects,
    CfnElement,
    Duration,
    IgnoreMode,
    Stack,
    aws_cloudwatch as cw,
    aws_ec2 as ec2,
    aws_ecr_assets as ecr_assets,
    aws_iam as iam,
    aws_sagemaker as sagemaker,
    aws_scheduler as scheduler,
    aws_stepfunctions as sfn,
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.deploy import VARIANT as DEPLOY_VARIANT
from oncopipe.deployment import EnvConfig
from oncopipe.manifest import MANIFEST_ROOT
from oncopipe.ops.cost import TAG_STAGE
from oncopipe.pipeline.definition import PipelineSettings, model_pipeline
from oncopipe.settings import bucket_env
from stacks.components.feature_store import PatientFeatureStore
from stacks.components.log_group import encrypted_log_group
from stacks.components.model_deploy import ModelDeploy
from stacks.components.model_governance import (
    ApprovalGuard,
    FourEyes,
    ModelApprover,
    package_arns,
)
from stacks.components.s3_grants import grant_objects
from stacks.components.sagemaker_jobs import (
    ProcessingStep,
    acknowledge_job_role,
    network_config,
    sagemaker_job_role,
)
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.data_lake_stack import DataLakeStack
from stacks.features_stack import FeaturesStack
from stacks.nag import acknowledge
from stacks.paths import REPO_ROOT

#: The training image's build context: only oncopipe/ and training/ (Docker syntax).
TRAINING_IMAGE_EXCLUDES = ["*", "!oncopipe", "!training", "**/__pycache__", "oncopipe/local"]


class ModelStack(Stack):
    """Everything the multimodal model needs in the cloud.

    Creates:
        - The training image (``training/Dockerfile``: PyTorch CPU, the sagemaker-training
          toolkit for script mode, the oncopipe library and ``training/``).
        - ``training_role`` and ``cohort_role`` (SageMaker), a security group for jobs.
        - ``tracking_server``: a SageMaker managed MLflow tracking server whose artifact
          store is ``mlflow/`` of the artifacts bucket (KMS).
        - ``model_package_group``: the model registry group of the response model.
        - With ``lifecycle.feature_store``, ``feature_store``
          (:class:`stacks.components.feature_store.PatientFeatureStore`): the feature
          group ``<prefix>-patient-inputs`` the pipeline's cohort step publishes each
          patient's model inputs to (``cohort_role`` may PutRecord to it); else None.
        - ``sagemaker_pipeline``: the SageMaker Pipeline ``<prefix>-response``
          (:func:`oncopipe.pipeline.definition.model_pipeline`: cohort -> train -> evaluate
          -> AUC gate -> register; with ``Tune`` a hyperparameter tuning job instead of the
          training job), run as ``PipelineRole``, its jobs as ``cohort_role``,
          ``training_role`` and ``evaluation_role``; the retrain gate starts it.
        - ``deploy`` (:class:`stacks.components.model_deploy.ModelDeploy`): an approved
          version deploys itself to the endpoint ``<prefix>-response`` (blue/green, rolled
          back by ``serving_alarms``) and publishes its drift baseline.
        - ``rescore`` (state machine ``NightlyRescore``, on ``lifecycle.rescore_schedule``):
          today's cohort (Processing, on the features stack's image) -> the newest Approved
          version (the one that serves) -> its artefact's SHA-256 checked against the
          package's (``ArtifactDigest`` function) -> a batch transform of the cohort with
          the *full* model into ``transform/<execution>/``. Jobs run in the VPC with
          volumes and outputs encrypted with the platform key.
        - When ``serving_model_package_arn`` is set (a pin): a real-time endpoint serving the
          pruned model (VPC, network isolation, KMS, data capture to ``data-capture/``);
          with ``serving_serverless`` also a serverless endpoint (SageMaker offers neither
          VPC nor data capture for serverless endpoints).
        - Governance (:mod:`stacks.components.model_governance`): ``approver`` (the
          ``ModelApprover`` role, the only one that may approve), ``four_eyes`` (rejects a
          version approved by its creator), and :meth:`govern`, which the app applies to
          every stack: no other role approves, registers a non-pending version or writes
          ``models/`` (the training role alone writes there, and deletes nothing).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        features: FeaturesStack,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        self.lake = lake
        self.key = lake.platform_key
        self.curated = lake.export_bucket(self, lake.curated, lake.curated_key)
        self.artifacts = lake.export_bucket(self, lake.artifacts, lake.platform_key)
        self.image = ecr_assets.DockerImageAsset(
            self,
            "TrainingImage",
            directory=str(REPO_ROOT),
            file="training/Dockerfile",
            exclude=TRAINING_IMAGE_EXCLUDES,
            ignore_mode=IgnoreMode.DOCKER,
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "ModelJobsSecurityGroup",
            vpc=vpc,
            description="SageMaker training, transform and endpoints: egress to VPC endpoints",
            allow_all_outbound=True,
        )
        # one image trains and serves (training/serve.py): the endpoint runs the torch
        # version the model was trained with
        self.inference_image = self.image.image_uri
        self.subnet_ids = vpc.select_subnets(
            subnet_type=subnets.subnet_type, subnet_group_name=subnets.subnet_group_name
        ).subnet_ids
        self.tracking_server = self._tracking_server(config)
        self.model_package_group = sagemaker.CfnModelPackageGroup(
            self,
            "ResponseModels",
            model_package_group_name=f"{config.prefix}-response",
            model_package_group_description="Therapy-response model (genomics, radiomics, "
            "notes); versions await manual approval before serving.",
        )
        self.group_name = f"{config.prefix}-response"
        self.approver = ModelApprover(self, "ModelApprover", config=config,
                                      group_name=self.group_name)  # fmt: skip
        self.four_eyes = FourEyes(self, "FourEyes", config=config, group_name=self.group_name,
                                  key=self.key, vpc=vpc, subnets=subnets)  # fmt: skip
        self.training_role = self._training_role()
        self.digest = self._digest_function(config, vpc, subnets)
        self.cohort_role = self._cohort_role(features)
        self.feature_store = self._feature_store(config)
        self.cohort_step = ProcessingStep(
            self,
            "Cohort",
            job_prefix="cohort",
            image=features.image,
            arguments=[],
            arguments_path="States.Array('processing.cohort', 'stage', '--build-id', "
            "$$.Execution.Name)",
            role=self.cohort_role,
            config=config,
            environment=bucket_env(curated=self.curated.bucket_name),
            security_group=self.security_group,
            subnet_ids=self.subnet_ids,
            volume_key_arn=self.key.key_arn,
        )
        self.rescore = self._rescore(config)
        self.evaluation_role = self._evaluation_role()
        self.sagemaker_pipeline = self._sagemaker_pipeline(config, features)
        self.deploy = self._deploy_on_approval(config, vpc, subnets)
        if config.serving_model_package_arn:
            self._endpoints(config)

    # -- resources ---------------------------------------------------------------------
    def _tracking_server(self, config: EnvConfig) -> sagemaker.CfnMlflowTrackingServer:
        role = iam.Role(
            self,
            "MlflowRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="oncopipe MLflow tracking server: its artifact store only",
        )
        store = {layout.ARTIFACTS_MLFLOW: "The tracking server's artifact store (runs, models)."}
        grant_objects(role, self.artifacts, read=store, write=store, delete=True)
        return sagemaker.CfnMlflowTrackingServer(
            self,
            "TrackingServer",
            tracking_server_name=f"{config.prefix}-tracking",
            artifact_store_uri=f"s3://{self.artifacts.bucket_name}/{layout.ARTIFACTS_MLFLOW}",
            role_arn=role.role_arn,
            tracking_server_size="Small",
            automatic_model_registration=False,
            weekly_maintenance_window_start="Sun:03:30",
        )

    def _training_role(self) -> iam.Role:
        log_group = "/aws/sagemaker/TrainingJobs"
        role = sagemaker_job_role(
            self, "TrainingRole",
            description="oncopipe training: cohort dataset in, model and checkpoints out",
            log_group=log_group, images=[self.image], key=self.key,
        )  # fmt: skip
        grant_objects(role, self.curated, read={
            layout.CURATED_COHORT_DATASET: "Reads the cohort dataset it trains on."})  # fmt: skip
        # models/<job>/ is written once (job names are unique) and never deleted: the
        # registered SHA-256 pins it; checkpoints are rewritten and pruned by spot training.
        models = {layout.ARTIFACTS_MODELS: "Writes model.tar.gz and its evaluation."}
        grant_objects(role, self.artifacts, read=models, write=models)
        checkpoints = {layout.ARTIFACTS_CHECKPOINTS: "Spot training saves and resumes checkpoints."}
        grant_objects(role, self.artifacts, read=checkpoints, write=checkpoints, delete=True)
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["sagemaker-mlflow:*"],
                resources=[self.tracking_server.attr_tracking_server_arn],
            )
        )
        acknowledge_job_role(role, log_group, {
            "Action::sagemaker-mlflow:*": "Logs runs and models to its own tracking server.",
        })  # fmt: skip
        return role

    def _digest_function(
        self, config: EnvConfig, vpc: ec2.IVpc, subnets: ec2.SubnetSelection
    ) -> StageFunction:
        """The function that hashes a registered artefact before the nightly rescore uses it."""
        function = StageFunction(
            self,
            "ArtifactDigest",
            handler="model_four_eyes",  # the governance adapter: digest requests
            description="oncopipe: SHA-256 and S3 version of a trained model artefact",
            key=self.key,
            vpc=vpc,
            subnets=subnets,
            environment={"MODEL_PACKAGE_GROUP": self.group_name},
            reserved_concurrency=2,
            log_retention_days=config.log_retention_days,
            timeout_seconds=900,
            memory_mb=512,
        )
        grant_objects(function.role, self.artifacts, read={
            layout.ARTIFACTS_MODELS: "Hashes the model.tar.gz the rescore uses."})  # fmt: skip
        return function

    def _digest_logical_id(self) -> str:
        resource = self.digest.function.node.default_child
        assert isinstance(resource, CfnElement)
        return self.get_logical_id(resource)

    def govern(self, scope: Construct) -> None:
        """Guard every role under ``scope`` (the app): see :class:`ApprovalGuard`.

        Idempotent: a second call for the same scope adds nothing.
        """
        governed: set[str] = self.__dict__.setdefault("_governed", set())
        if scope.node.path in governed:
            return
        governed.add(scope.node.path)
        Aspects.of(scope).add(ApprovalGuard(
            approver=self.approver.role, models_writer=self.training_role,
            models_prefix_arn=self.lake.artifacts.arn_for_objects(f"{layout.ARTIFACTS_MODELS}*"),
            group_name=self.group_name,
        ))  # fmt: skip

    def _cohort_role(self, features: FeaturesStack) -> iam.Role:
        log_group = "/aws/sagemaker/ProcessingJobs"
        role = sagemaker_job_role(
            self, "CohortRole",
            description="oncopipe cohort step: feature tables and labels in, dataset out",
            log_group=log_group, images=[features.image], key=self.key,
        )  # fmt: skip
        readable = (layout.CURATED_GENOMICS_VARIANTS, layout.CURATED_IMAGING_RADIOMICS,
                    f"{layout.CURATED_NOTES}concepts/", layout.CURATED_LABELS)  # fmt: skip
        grant_objects(role, self.curated, read={p: "Reads a feature table or labels."
                                                for p in readable})  # fmt: skip
        outputs = {
            layout.CURATED_COHORT_DATASET: "Writes the joined, split and normalised dataset.",
            layout.CURATED_COHORT_INFERENCE: "Writes the batch-transform input (a patient a line).",
        }
        grant_objects(role, self.curated, read=outputs, write=outputs, delete=True)
        # the build is one manifest item (oncopipe.manifest): it reads its manifest to skip
        # a finished build, and writes it last as the commit record
        manifests = f"{MANIFEST_ROOT}/"
        grant_objects(
            role,
            self.curated,
            list_prefixes=(manifests,),
            read={manifests: "Reads its builds' manifests (a finished build is skipped)."},
            write={manifests: "Writes its builds' manifests (the commit record)."},
        )
        acknowledge_job_role(role, log_group, {})
        return role

    def _feature_store(self, config: EnvConfig) -> PatientFeatureStore | None:
        """With ``lifecycle.feature_store``: the patient-inputs feature group, which the
        pipeline's cohort step publishes to (:class:`PatientFeatureStore`); else None."""
        if not config.lifecycle.feature_store:
            return None
        store = PatientFeatureStore(
            self,
            "PatientFeatureStore",
            config=config,
            curated=self.curated,
            curated_key=self.lake.curated_key,
            database_name=self.lake.database_name,
            online_key=self.key,
        )
        store.grant_publish(self.cohort_role)
        return store

    def _evaluation_role(self) -> iam.Role:
        log_group = "/aws/sagemaker/ProcessingJobs"
        role = sagemaker_job_role(
            self, "EvaluationRole",
            description="oncopipe evaluation step: model, test split and histograms in, "
            "report and drift baseline out",
            log_group=log_group, images=[self.image], key=self.key,
        )  # fmt: skip
        grant_objects(role, self.artifacts, read={
            layout.ARTIFACTS_MODELS: "Reads the model.tar.gz it scores and hashes."})  # fmt: skip
        grant_objects(role, self.curated, read={
            layout.CURATED_COHORT_DATASET: "Reads the dataset's test split.",
            layout.CURATED_GENOMICS_VAF_HISTOGRAMS: "Sums the training samples' VAF "
            "histograms into the drift baseline.",
        })  # fmt: skip
        reports = {layout.ARTIFACTS_EVALUATION: "Writes evaluation.json and baseline.json."}
        grant_objects(role, self.artifacts, read=reports, write=reports)
        acknowledge_job_role(role, log_group, {})
        return role

    # -- the SageMaker pipeline ----------------------------------------------------------
    def _sagemaker_pipeline(
        self, config: EnvConfig, features: FeaturesStack
    ) -> sagemaker.CfnPipeline:
        """``AWS::SageMaker::Pipeline`` from :func:`oncopipe.pipeline.definition.model_pipeline`."""
        self.pipeline_name = f"{config.prefix}-response"
        settings = PipelineSettings(
            curated_bucket=self.curated.bucket_name,
            artifacts_bucket=self.artifacts.bucket_name,
            cohort_role_arn=self.cohort_role.role_arn,
            training_role_arn=self.training_role.role_arn,
            evaluation_role_arn=self.evaluation_role.role_arn,
            processing_image_uri=features.image.image_uri,
            training_image_uri=self.image.image_uri,
            inference_image_uri=self.inference_image,
            kms_key_arn=self.key.key_arn,
            subnet_ids=tuple(self.subnet_ids),
            security_group_ids=(self.security_group.security_group_id,),
            model_package_group_name=self.group_name,
            project=config.project,
            processing_instance_type=config.processing_instance_type,
            training_instance_type=config.training_instance_type,
            serving_instance_type=config.serving_instance_type,
            training_spot=config.training_spot,
            training_max_runtime_s=config.training_max_runtime_minutes * 60,
            training_max_wait_s=config.training_max_wait_minutes * 60,
            min_auc=config.lifecycle.auc_gate,
            auc_tolerance=config.lifecycle.auc_tolerance,
            mlflow_tracking_uri=self.tracking_server.attr_tracking_server_arn,
            mlflow_experiment=f"{config.prefix}-response",
            cohort_environment=self.feature_store.environment if self.feature_store else {},
            tuning_max_jobs=config.tuning_max_jobs,
            tuning_parallel_jobs=config.tuning_parallel_jobs,
        )
        role = self._pipeline_role()
        body = Stack.of(self).to_json_string(model_pipeline(settings))
        pipeline = sagemaker.CfnPipeline(
            self,
            "ResponsePipeline",
            pipeline_name=self.pipeline_name,
            pipeline_display_name=self.pipeline_name,
            pipeline_description="cohort -> train (or tune) -> evaluate -> AUC gate -> "
            "register (PendingManualApproval)",
            role_arn=role.role_arn,
            pipeline_definition={"PipelineDefinitionBody": body},
        )
        pipeline.node.add_dependency(role)
        return pipeline

    def _pipeline_role(self) -> iam.Role:
        """The role SageMaker runs the pipeline's steps as: start jobs, pass their roles."""
        stack = Stack.of(self)
        role = iam.Role(
            self,
            "PipelineRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="oncopipe model pipeline: starts its jobs and registers versions",
        )
        jobs = [stack.format_arn(service="sagemaker", resource=kind, resource_name="pipelines-*")
                for kind in ("processing-job", "training-job")]  # fmt: skip
        role.add_to_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob",
                     "sagemaker:StopProcessingJob", "sagemaker:CreateTrainingJob",
                     "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob",
                     "sagemaker:AddTags"],
            resources=jobs,
        ))  # fmt: skip
        # SageMaker names a pipeline's tuning job itself (<= 32 characters, no documented
        # prefix); its trials are started by the tuning service, as the training role
        role.add_to_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateHyperParameterTuningJob",
                     "sagemaker:DescribeHyperParameterTuningJob",
                     "sagemaker:StopHyperParameterTuningJob",
                     "sagemaker:ListTrainingJobsForHyperParameterTuningJob",
                     "sagemaker:AddTags"],
            resources=[stack.format_arn(service="sagemaker", resource="hyper-parameter-tuning-job",
                                        resource_name="*")],
        ))  # fmt: skip
        role.add_to_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage",
                     "sagemaker:AddTags"],
            resources=[*package_arns(self, self.group_name),
                       stack.format_arn(service="sagemaker", resource="model-package-group",
                                        resource_name=self.group_name)],
        ))  # fmt: skip
        role.add_to_policy(iam.PolicyStatement(
            actions=["iam:PassRole"],
            resources=[self.cohort_role.role_arn, self.training_role.role_arn,
                       self.evaluation_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        ))  # fmt: skip
        # the condition step reads evaluation.json (the property file) as this role
        grant_objects(role, self.artifacts, read={
            layout.ARTIFACTS_EVALUATION: "Reads the report the AUC gate compares."})  # fmt: skip
        self.key.grant_decrypt(role)
        prefix = "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
        for finding, reason in {
            f"{prefix}processing-job/pipelines-*": "SageMaker names a pipeline's jobs "
            "pipelines-<execution>-<step>-<id>; the prefix is all that is known.",
            f"{prefix}training-job/pipelines-*": "SageMaker names a pipeline's jobs "
            "pipelines-<execution>-<step>-<id>; the prefix is all that is known.",
            f"{prefix}hyper-parameter-tuning-job/*": "SageMaker names a pipeline's tuning "
            "job itself (at most 32 characters, no documented prefix).",
            f"{prefix}model-package/{self.group_name}/*": (
                "Registers new versions in its own model package group (as "
                "PendingManualApproval: the approval guard denies any other status)."
            ),
        }.items():
            acknowledge(role, f"AwsSolutions-IAM5[{finding}]", reason)
        return role

    # -- the pipeline ------------------------------------------------------------------
    def _rescore(self, config: EnvConfig) -> sfn.StateMachine:
        """The nightly batch transform: today's cohort scored by the serving version, full model.

        A Step Functions state machine, not a second SageMaker Pipeline: it has no training,
        no condition on metrics and nothing to cache, only a chain of service calls around
        one transform job, and it needs the registry's newest Approved version, which a
        pipeline step cannot look up.
        """
        failed = sfn.Fail(self, "RescoreFailed", error="NightlyRescoreFailed",
                          cause="a rescore step failed; see the execution history")  # fmt: skip
        cohort = self.cohort_step.state
        approved = tasks.CallAwsService(
            self,
            "ServingVersion",
            service="sagemaker",
            action="listModelPackages",
            parameters={
                "ModelPackageGroupName": self.group_name,
                "ModelApprovalStatus": "Approved",
                "SortBy": "CreationTime",
                "SortOrder": "Descending",
                "MaxResults": 1,
            },
            # ListModelPackages supports no resource-level scoping
            iam_resources=["*"],
            result_selector={"packages.$": "$.ModelPackageSummaryList"},
            result_path="$.approved",
        )
        describe = tasks.CallAwsService(
            self,
            "DescribeServingVersion",
            service="sagemaker",
            action="describeModelPackage",
            parameters={"ModelPackageName": sfn.JsonPath.string_at(
                "$.approved.packages[0].ModelPackageArn")},
            iam_resources=package_arns(self, self.group_name),
            result_selector={
                "arn.$": "$.ModelPackageArn",
                "model_data.$": "$.InferenceSpecification.Containers[0].ModelDataUrl",
                "sha256.$": "$.CustomerMetadataProperties.artifact_sha256",
            },
            result_path="$.package",
        )  # fmt: skip
        digest = tasks.LambdaInvoke(
            self,
            "HashArtifact",
            lambda_function=self.digest.function,
            payload=sfn.TaskInput.from_object(
                {"model_data": sfn.JsonPath.string_at("$.package.model_data")}
            ),
            result_selector={"sha256": sfn.JsonPath.string_at("$.Payload.sha256")},
            result_path="$.artifact",
            retry_on_service_exceptions=True,
        )
        self.serving_role = self._serving_role()
        model = tasks.CallAwsService(
            self,
            "TransformModel",
            service="sagemaker",
            action="createModel",
            parameters={
                "ModelName": sfn.JsonPath.format("response-full-{}", sfn.JsonPath.uuid()),
                "ExecutionRoleArn": self.serving_role.role_arn,
                "PrimaryContainer": {
                    "Image": self.inference_image,
                    "ModelDataUrl": sfn.JsonPath.string_at("$.package.model_data"),
                    "Environment": {"ONCOPIPE_MODEL_VARIANT": "full"},
                },
                "VpcConfig": network_config(self.security_group, self.subnet_ids),
                "EnableNetworkIsolation": True,
            },
            iam_resources=[self.format_arn(service="sagemaker", resource="model",
                                           resource_name="response-full-*")],
            additional_iam_statements=[iam.PolicyStatement(
                actions=["iam:PassRole"], resources=[self.serving_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            )],
            result_selector={"name": sfn.JsonPath.string_at("$.ModelArn")},
            result_path="$.model",
        )  # fmt: skip
        transform = sfn.CustomState(self, "BatchTransform", state_json={
            "Type": "Task",
            "Resource": "arn:aws:states:::sagemaker:createTransformJob.sync",
            "Parameters": {
                "TransformJobName.$": "States.Format('transform-{}', States.UUID())",
                "ModelName.$": "States.ArrayGetItem(States.StringSplit($.model.name, '/'), 1)",
                "TransformInput": {
                    "DataSource": {"S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri.$": f"States.Format('s3://{self.curated.bucket_name}/"
                        f"{layout.CURATED_COHORT_INFERENCE}{{}}/', $$.Execution.Name)",
                    }},
                    "ContentType": "application/json",
                    "SplitType": "Line",
                },
                "TransformOutput": {
                    "S3OutputPath.$": f"States.Format('s3://{self.artifacts.bucket_name}/"
                    f"{layout.ARTIFACTS_TRANSFORM}{{}}/', $$.Execution.Name)",
                    "KmsKeyId": self.key.key_arn,
                    "AssembleWith": "Line",
                    "Accept": "application/json",
                },
                "TransformResources": {"InstanceCount": 1,
                                       "InstanceType": config.processing_instance_type,
                                       "VolumeKmsKeyId": self.key.key_arn},
                "BatchStrategy": "SingleRecord",
                "Tags": [{"Key": "project", "Value": config.project},
                         {"Key": TAG_STAGE, "Value": "transform"}],
            },
            "ResultPath": None,
        })  # fmt: skip
        for state in (cohort, transform):
            state.add_catch(failed, errors=["States.ALL"], result_path="$.error")
        for task in (approved, describe, digest, model):
            task.add_catch(failed, result_path="$.error")
        mismatch = sfn.Fail(self, "ArtifactChanged", error="ArtifactDigestMismatch",
                            cause="the serving version's model.tar.gz is not the one its "
                            "package recorded; nothing scored")  # fmt: skip
        scored = sfn.Succeed(self, "Rescored", comment="predictions under transform/<execution>/")
        verified = (
            sfn.Choice(self, "DigestMatches")
            .when(sfn.Condition.string_equals_json_path("$.artifact.sha256", "$.package.sha256"),
                  model.next(transform).next(scored))
            .otherwise(mismatch)
        )  # fmt: skip
        nothing = sfn.Succeed(self, "NoApprovedVersion", comment="nothing serves yet")
        chain = cohort.next(approved).next(
            sfn.Choice(self, "AnyApproved")
            .when(sfn.Condition.is_present("$.approved.packages[0]"),
                  describe.next(digest).next(verified))
            .otherwise(nothing)
        )  # fmt: skip
        logs_group = encrypted_log_group(self, "RescoreLogs", key=self.key,
                                         retention_days=config.log_retention_days)  # fmt: skip
        machine = sfn.StateMachine(
            self,
            "NightlyRescore",
            definition_body=sfn.DefinitionBody.from_chainable(chain),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.hours(12),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=logs_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
            comment="oncopipe nightly rescore: cohort -> serving version (digest checked) -> "
            "batch transform with the full model",
        )
        self.cohort_step.grant_start(machine)
        self._grant_pipeline(machine)
        if config.lifecycle.rescore_schedule:
            self._rescore_schedule(config, machine)
        return machine

    def _rescore_schedule(self, config: EnvConfig, machine: sfn.StateMachine) -> None:
        """``lifecycle.rescore_schedule`` (EventBridge Scheduler, UTC) starts the rescore."""
        dead_letters = encrypted_queue(self, "RescoreScheduleDeadLetters", key=self.key)
        role = iam.Role(
            self,
            "RescoreScheduleRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": self.account}},
            ),
            description="oncopipe nightly rescore schedule: starts the rescore only",
        )
        machine.grant_start_execution(role)
        dead_letters.grant_send_messages(role)
        for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*"):
            acknowledge(role, f"AwsSolutions-IAM5[Action::{action}]",
                        "Sends to the schedule's dead-letter queue, encrypted with the platform "
                        "key (CDK's grant_send_messages): that one key only.")  # fmt: skip
        self.rescore_schedule = scheduler.CfnSchedule(
            self,
            "NightlyRescoreSchedule",
            description="Nightly batch transform of the cohort with the serving version",
            schedule_expression=config.lifecycle.rescore_schedule,
            schedule_expression_timezone="UTC",
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            target=scheduler.CfnSchedule.TargetProperty(
                arn=machine.state_machine_arn,
                role_arn=role.role_arn,
                input="{}",
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                    maximum_event_age_in_seconds=6 * 3600, maximum_retry_attempts=8
                ),
                dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(
                    arn=dead_letters.queue_arn
                ),
            ),
        )

    def _grant_pipeline(self, machine: sfn.StateMachine) -> None:
        stack = Stack.of(self)
        role = machine.role
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob",
                     "sagemaker:StopTransformJob", "sagemaker:AddTags"],
            resources=[stack.format_arn(service="sagemaker", resource="transform-job",
                                        resource_name="transform-*")],
        ))  # fmt: skip
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
            resources=[stack.format_arn(
                service="events", resource="rule",
                resource_name="StepFunctionsGetEventsForSageMakerTransformJobsRule")],
        ))  # fmt: skip
        policy = role.node.find_child("DefaultPolicy")
        prefix = "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
        for finding, reason in {
            "Resource::*": (
                "CloudWatch Logs delivery and X-Ray actions of Step Functions, and "
                "sagemaker:ListModelPackages, support no resource-level scoping."
            ),
            f"{prefix}processing-job/*": "Job names are generated per execution (prefix + UUID).",
            f"{prefix}transform-job/transform-*": "Job names are generated per execution "
            "(prefix + UUID).",
            f"{prefix}model/response-full-*": "Models of the batch transform, one per run.",
            f"Resource::<{self._digest_logical_id()}.Arn>:*": (
                "CDK's LambdaInvoke grant: the versions and aliases of the one digest function."
            ),
            f"{prefix}model-package/{self.config.prefix}-response/*": (
                "Reads the versions of its own model package group (the serving one)."
            ),
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)

    # -- serving -----------------------------------------------------------------------
    def _deploy_on_approval(
        self, config: EnvConfig, vpc: ec2.IVpc, subnets: ec2.SubnetSelection
    ) -> ModelDeploy:
        """Approval deploys: :class:`ModelDeploy` on the endpoint ``<prefix>-response``.

        Its blue/green updates roll back on two alarms of that endpoint's variant (named
        here: SageMaker's auto-rollback takes alarm names): any 5XX, and p95 model latency
        above ``ops.endpoint_p95_latency_ms``.
        """
        self.endpoint_name = f"{config.prefix}-response"
        dimensions = {"EndpointName": self.endpoint_name, "VariantName": DEPLOY_VARIANT}
        alarms = []
        for alarm_id, metric, statistic, threshold, what in (
            ("Serving5xx", "Invocation5XXErrors", "Sum", 1, "returned a 5XX"),
            ("ServingLatency", "ModelLatency", "p95",
             config.ops.endpoint_p95_latency_ms * 1000,
             f"p95 model latency over {config.ops.endpoint_p95_latency_ms} ms"),
        ):  # fmt: skip
            alarms.append(cw.Alarm(
                self, alarm_id,
                alarm_name=f"{self.endpoint_name}-{alarm_id.removeprefix('Serving').lower()}",
                alarm_description=f"{self.endpoint_name}: the serving variant {what}; rolls "
                "a blue/green deployment back",
                metric=cw.Metric(namespace="AWS/SageMaker", metric_name=metric,
                                 dimensions_map=dimensions, statistic=statistic,
                                 period=Duration.minutes(1)),
                threshold=threshold, evaluation_periods=2, datapoints_to_alarm=2,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))  # fmt: skip
            acknowledge(
                alarms[-1],
                "HIPAA.Security-CloudWatchAlarmAction",
                "SageMaker's blue/green auto-rollback watches this alarm by name; the Ops "
                "stack's endpoint alarms notify the operators.",
            )
        self.serving_alarms = alarms
        return ModelDeploy(
            self,
            "DeployOnApproval",
            config=config,
            key=self.key,
            artifacts=self.artifacts,
            group_name=self.group_name,
            endpoint_name=self.endpoint_name,
            serving_role=self.serving_role,
            security_group_id=self.security_group.security_group_id,
            subnet_ids=list(self.subnet_ids),
            vpc=vpc,
            subnets=subnets,
            rollback_alarm_names=[str(a.alarm_name) for a in alarms],
        )

    def _serving_role(self) -> iam.Role:
        log_group = "/aws/sagemaker/Endpoints"
        role = sagemaker_job_role(
            self, "ServingRole",
            description="oncopipe serving and batch transform: model artifacts in",
            log_group=log_group, images=[self.image], key=self.key,
        )  # fmt: skip
        grant_objects(role, self.artifacts, read={
            layout.ARTIFACTS_MODELS: "Loads the trained model artifacts."})  # fmt: skip
        grant_objects(
            role,
            self.curated,
            read={layout.CURATED_COHORT_INFERENCE: "Batch transform reads the inference records."},
        )
        predictions = {layout.ARTIFACTS_TRANSFORM: "Batch transform writes predictions."}
        grant_objects(role, self.artifacts, read=predictions, write=predictions)
        grant_objects(
            role,
            self.artifacts,
            list_prefixes=(),
            write={
                layout.ARTIFACTS_DATA_CAPTURE: "The endpoint writes captured requests, responses."
            },
        )
        acknowledge_job_role(role, log_group, {})
        return role

    def _endpoints(self, config: EnvConfig) -> None:
        package = config.serving_model_package_arn
        model = sagemaker.CfnModel(
            self,
            "ServingModel",
            execution_role_arn=self.serving_role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                model_package_name=package,
                environment={"ONCOPIPE_MODEL_VARIANT": "pruned"},
            ),
            vpc_config=sagemaker.CfnModel.VpcConfigProperty(
                security_group_ids=[self.security_group.security_group_id],
                subnets=self.subnet_ids,
            ),
            enable_network_isolation=True,
        )
        capture = sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
            capture_options=[sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode=m)
                             for m in ("Input", "Output")],
            destination_s3_uri=f"s3://{self.artifacts.bucket_name}/{layout.ARTIFACTS_DATA_CAPTURE}",
            initial_sampling_percentage=100,
            kms_key_id=self.key.key_arn,
            enable_capture=True,
        )  # fmt: skip
        endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "RealtimeConfig",
            kms_key_id=self.key.key_arn,
            data_capture_config=capture,
            production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name="pruned", model_name=model.attr_model_name,
                initial_instance_count=1, instance_type=config.serving_instance_type,
                initial_variant_weight=1.0,
            )],
        )  # fmt: skip
        self.endpoint = sagemaker.CfnEndpoint(
            self, "RealtimeEndpoint", endpoint_config_name=endpoint_config.attr_endpoint_config_name
        )
        if not config.serving_serverless:
            return
        serverless_model = sagemaker.CfnModel(
            self,
            "ServerlessModel",
            execution_role_arn=self.serving_role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                model_package_name=package,
                environment={"ONCOPIPE_MODEL_VARIANT": "pruned"},
            ),
        )
        serverless_config = sagemaker.CfnEndpointConfig(
            self,
            "ServerlessConfig",
            production_variants=[sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name="serverless", model_name=serverless_model.attr_model_name,
                serverless_config=sagemaker.CfnEndpointConfig.ServerlessConfigProperty(
                    max_concurrency=5, memory_size_in_mb=2048),
            )],
        )  # fmt: skip
        acknowledge(
            serverless_config,
            "HIPAA.Security-SageMakerEndpointConfigurationKMSKeyConfigured",
            "Opt-in serverless endpoint: SageMaker accepts no KMS key, VPC or data capture "
            "for serverless variants; the real-time endpoint has all three.",
        )
        self.serverless_endpoint = sagemaker.CfnEndpoint(
            self, "ServerlessEndpoint",
            endpoint_config_name=serverless_config.attr_endpoint_config_name,
        )  # fmt: skip
