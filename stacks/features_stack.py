"""Feature stages on SageMaker Processing and the daily workflow that runs them."""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    Duration,
    IgnoreMode,
    Stack,
    aws_ec2 as ec2,
    aws_ecr_assets as ecr_assets,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_stepfunctions as sfn,
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.deployment import EnvConfig
from stacks.components.log_group import encrypted_log_group
from stacks.components.sagemaker_jobs import (
    ProcessingStep,
    acknowledge_job_role,
    sagemaker_job_role,
)
from stacks.components.stage_function import encrypted_queue
from stacks.data_lake_stack import DataLakeStack
from stacks.genomics_stack import GenomicsStack
from stacks.ingest_stack import grant_pseudonym_secret
from stacks.nag import acknowledge, bucket_objects_finding
from stacks.paths import REPO_ROOT

#: The processing image's build context: only oncopipe/ and processing/ (Docker syntax).
PROCESSING_IMAGE_EXCLUDES = ["*", "!oncopipe", "!processing", "**/__pycache__", "oncopipe/local"]


class FeaturesStack(Stack):
    """Radiomics on SageMaker Processing, run every day after the imaging volumes job.

    Creates:
        - The processing image (``processing/Dockerfile``: PyRadiomics and the oncopipe
          library, built at deploy) and ``processing_role``.
        - A security group for processing jobs in the private isolated subnets (egress
          reaches only the VPC endpoints).
        - ``radiomics_step``: ``python -m processing.radiomics stage`` on the instance
          type of the configuration, its volume encrypted with the platform key, in the
          VPC, inter-container traffic encrypted, bounded run time.
        - ``state_machine`` (``ImagingFeaturesDaily``, 03:00 UTC): the imaging Batch job
          (de-identified series -> volumes and masks), then the radiomics step, for the
          previous day's ingest run. Failures end in a visible failed execution.

    Grants (processing role): read ``imaging/volumes/*`` and ``imaging/masks/*`` and
    write ``imaging/radiomics/*`` and ``_manifests/*`` of curated; pull its image; write
    its logs; the network interfaces SageMaker creates in the VPC.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        genomics: GenomicsStack,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.curated = lake.export_bucket(self, lake.curated, lake.curated_key)
        self.image = ecr_assets.DockerImageAsset(
            self,
            "ProcessingImage",
            directory=str(REPO_ROOT),
            file="processing/Dockerfile",
            exclude=PROCESSING_IMAGE_EXCLUDES,
            ignore_mode=IgnoreMode.DOCKER,
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        self.processing_role = self._processing_role(lake)
        self.security_group = ec2.SecurityGroup(
            self,
            "ProcessingSecurityGroup",
            vpc=vpc,
            description="SageMaker Processing jobs: no ingress; egress to VPC endpoints",
            allow_all_outbound=True,
        )
        environment = {
            "INGEST_BUCKET": lake.ingest.bucket_name,
            "QUARANTINE_BUCKET": lake.quarantine.bucket_name,
            "CURATED_BUCKET": self.curated.bucket_name,
            "ARTIFACTS_BUCKET": lake.artifacts.bucket_name,
        }
        common: dict[str, Any] = {
            "image": self.image,
            "role": self.processing_role,
            "config": config,
            "environment": environment,
            "security_group": self.security_group,
            "subnet_ids": vpc.select_subnets(
                subnet_type=subnets.subnet_type, subnet_group_name=subnets.subnet_group_name
            ).subnet_ids,
            "volume_key_arn": lake.platform_key.key_arn,
        }
        self.radiomics_step = ProcessingStep(
            self,
            "Radiomics",
            job_prefix="radiomics",
            arguments=["processing.radiomics", "stage"],
            **common,
        )
        self.notes_role = self._notes_role(lake)
        self.notes_step = ProcessingStep(
            self, "Notes", job_prefix="notes", arguments=["processing.notes", "stage"],
            **{**common, "role": self.notes_role,
               "environment": {**environment,
                               "PSEUDONYM_SECRET_ARN": lake.pseudonym_secret.secret_arn}},
        )  # fmt: skip
        self.state_machine = self._state_machine(config, lake, genomics)
        self.schedule_dead_letters = encrypted_queue(
            self, "ScheduleDeadLetters", key=lake.platform_key
        )
        events.Rule(
            self,
            "DailyImagingFeatures",
            description="Volumes and radiomics of the previous day's de-identified series",
            schedule=events.Schedule.cron(minute="0", hour="3"),
            targets=[
                targets.SfnStateMachine(
                    self.state_machine,
                    dead_letter_queue=self.schedule_dead_letters,
                    retry_attempts=2,
                )
            ],
        )

    def _processing_role(self, lake: DataLakeStack) -> iam.Role:
        log_group = "/aws/sagemaker/ProcessingJobs"
        role = sagemaker_job_role(
            self, "ProcessingRole",
            description="oncopipe SageMaker Processing: volumes and masks in, features out",
            log_group=log_group, images=[self.image], key=lake.platform_key,
        )  # fmt: skip
        curated = self.curated
        curated.grant_read(role, f"{layout.CURATED_IMAGING_VOLUMES}*")
        curated.grant_read(role, f"{layout.CURATED_IMAGING}masks/*")
        curated.grant_read_write(role, f"{layout.CURATED_IMAGING_RADIOMICS}*")
        curated.grant_read_write(role, "_manifests/*")
        acknowledge_job_role(role, log_group, {
            bucket_objects_finding(curated, f"{layout.CURATED_IMAGING_VOLUMES}*"): (
                "Reads the Parquet volumes."
            ),
            bucket_objects_finding(curated, f"{layout.CURATED_IMAGING}masks/*"): "Reads masks.",
            bucket_objects_finding(curated, f"{layout.CURATED_IMAGING_RADIOMICS}*"): (
                "Writes the feature tables."
            ),
            bucket_objects_finding(curated, "_manifests/*"): (
                "Reads the volume manifests and writes its items' manifests."
            ),
        })  # fmt: skip
        return role

    def _notes_role(self, lake: DataLakeStack) -> iam.Role:
        """The notes job: the only processing role that reads PHI (the notes in ingest)."""
        log_group = "/aws/sagemaker/ProcessingJobs"
        role = sagemaker_job_role(
            self, "NotesRole",
            description="oncopipe notes: ingest notes in, scrubbed text and concepts out",
            log_group=log_group, images=[self.image], key=lake.platform_key,
        )  # fmt: skip
        ingest = lake.export_bucket(self, lake.ingest, lake.ingest_key)
        quarantine = lake.export_bucket(self, lake.quarantine, lake.ingest_key)
        artifacts = lake.export_bucket(self, lake.artifacts, lake.platform_key)
        ingest.grant_read(role, f"{layout.INGEST_NOTES}*")
        ingest.grant_read(role, f"{layout.INGEST_SAMPLESHEETS}*")
        quarantine.grant_read_write(role)
        self.curated.grant_read_write(role, f"{layout.CURATED_NOTES}*")
        self.curated.grant_read_write(role, "_manifests/*")
        artifacts.grant_read_write(role, f"{layout.ARTIFACTS_MODELS}notes-tokenizer/*")
        grant_pseudonym_secret(lake, role)
        acknowledge_job_role(role, log_group, {
            bucket_objects_finding(ingest, f"{layout.INGEST_NOTES}*"): "Reads the notes.",
            bucket_objects_finding(ingest, f"{layout.INGEST_SAMPLESHEETS}*"): (
                "Reads the sample sheet that names a note without a Patient-ID header."
            ),
            bucket_objects_finding(quarantine): (
                "Reads the route manifests; quarantines unreadable notes with the reason."
            ),
            bucket_objects_finding(self.curated, f"{layout.CURATED_NOTES}*"): (
                "Writes scrubbed notes, concepts and tokens."
            ),
            bucket_objects_finding(self.curated, "_manifests/*"): "Writes its manifests.",
            bucket_objects_finding(artifacts, f"{layout.ARTIFACTS_MODELS}notes-tokenizer/*"): (
                "Stores the notes tokenizer once and reuses it."
            ),
        })  # fmt: skip
        return role

    def _state_machine(
        self, config: EnvConfig, lake: DataLakeStack, genomics: GenomicsStack
    ) -> sfn.StateMachine:
        failed = sfn.Fail(self, "FeaturesFailed", error="FeaturesFailed",
                          cause="a Batch or processing job failed; see its logs")  # fmt: skip
        volumes = tasks.BatchSubmitJob(
            self,
            "ImagingVolumes",
            job_name="imaging-volumes",
            job_queue_arn=genomics.job_queue.job_queue_arn,
            job_definition_arn=genomics.imaging_job.job_definition_arn,
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            result_path=sfn.JsonPath.DISCARD,
        )
        # Imaging (volumes, then radiomics) and notes run side by side; a failure in
        # either branch fails the execution visibly.
        branches = (
            sfn.Parallel(self, "Features", result_path=sfn.JsonPath.DISCARD)
            .branch(volumes.next(self.radiomics_step.state))
            .branch(self.notes_step.state)
        )
        branches.add_catch(failed, result_path="$.error")
        definition = branches.next(
            sfn.Succeed(self, "FeaturesWritten", comment="volumes, masks, radiomics, notes")
        )
        logs_group = encrypted_log_group(
            self, "StateMachineLogs", key=lake.platform_key,
            retention_days=config.log_retention_days,
        )  # fmt: skip
        machine = sfn.StateMachine(
            self,
            "ImagingFeaturesDaily",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.hours(24),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=logs_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
            comment="oncopipe daily features: imaging volumes then radiomics; clinical notes",
        )
        self.radiomics_step.grant_start(machine)
        policy = machine.role.node.find_child("DefaultPolicy")
        for finding, reason in {
            "Resource::*": (
                "CloudWatch Logs delivery and X-Ray actions of Step Functions support no "
                "resource-level scoping."
            ),
            "Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job-definition/*": (  # noqa: E501
                "The Step Functions Batch integration submits by job-definition revision; the "
                "queue it submits to is scoped to the genomics queue."
            ),
            "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
            "processing-job/*": (
                "Processing job names are generated per execution (prefix + UUID)."
            ),
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
        return machine
