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
from oncopipe.manifest import MANIFEST_ROOT
from oncopipe.settings import bucket_env
from stacks.components.ingest_readers import ingest_reader_role_name
from stacks.components.log_group import encrypted_log_group
from stacks.components.notes_arrival import NotesOnArrival
from stacks.components.s3_grants import grant_objects
from stacks.components.sagemaker_jobs import (
    ProcessingStep,
    acknowledge_job_role,
    sagemaker_job_role,
)
from stacks.components.series_imaging import SeriesImaging
from stacks.components.stage_function import encrypted_queue
from stacks.data_lake_stack import DataLakeStack
from stacks.genomics_stack import (
    GenomicsStack,
    acknowledge_batch_then_processing,
    grant_batch_sync,
)
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
        - ``notes_arrival`` (:class:`NotesOnArrival`): the notes queue the ingest state
          machine sends each routed note's run to, and the per-run notes job it starts.

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
        self.config = config
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
        environment = bucket_env(
            ingest=lake.ingest.bucket_name,
            quarantine=lake.quarantine.bucket_name,
            curated=self.curated.bucket_name,
            artifacts=lake.artifacts.bucket_name,
        )
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
        notes_job: dict[str, Any] = {
            **common, "role": self.notes_role,
            "environment": {**environment,
                            "PSEUDONYM_SECRET_ARN": lake.pseudonym_secret.secret_arn,
                            "NOTES_MAX_BYTES": str(config.notes_max_bytes)},
        }  # fmt: skip
        self.notes_step = ProcessingStep(
            self, "Notes", job_prefix="notes", arguments=["processing.notes", "stage"],
            **notes_job,
        )  # fmt: skip
        # Notes on arrival: the ingest state machine queues each routed note's run; the
        # notes job of that run starts within ops.notes_batch_seconds (the daily state
        # machine stays as the sweeper).
        self.notes_arrival = NotesOnArrival(
            self, "NotesOnArrival", config=config, key=lake.platform_key, vpc=vpc,
            subnets=subnets, processing=notes_job,
        )  # fmt: skip
        #: The genomics job queue, whose finished jobs tell the patient-ready path a run's
        #: variants may be complete (:class:`stacks.components.patient_ready.PatientReady`).
        self.genomics_job_queue = genomics.job_queue
        self.state_machine = self._state_machine(config, lake, genomics)
        # Event-driven imaging: a DICOM series converts once it settled (the daily
        # state machine above stays as the sweeper for anything missed).
        self.series_imaging = SeriesImaging(
            self, "SeriesImaging", config=config, key=lake.platform_key, vpc=vpc,
            subnets=subnets, job_queue_arn=genomics.job_queue.job_queue_arn,
            imaging_job_definition_arn=genomics.imaging_job.job_definition_arn,
            processing=common,
        )  # fmt: skip
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
        manifests = f"{MANIFEST_ROOT}/"
        grant_objects(role, self.curated, list_prefixes=(manifests,), read={
            layout.CURATED_IMAGING_VOLUMES: "Reads the Parquet volumes.",
            f"{layout.CURATED_IMAGING}masks/": "Reads the masks.",
            manifests: "Reads the volume manifests and its items' manifests.",
        })  # fmt: skip
        outputs = {layout.CURATED_IMAGING_RADIOMICS: "Writes the feature tables.",
                   manifests: "Writes its items' manifests."}  # fmt: skip
        grant_objects(role, self.curated, read=outputs, write=outputs, delete=True)
        acknowledge_job_role(role, log_group, {})
        return role

    def _notes_role(self, lake: DataLakeStack) -> iam.Role:
        """The notes job: the only processing role that reads PHI (the notes in ingest)."""
        log_group = "/aws/sagemaker/ProcessingJobs"
        role = sagemaker_job_role(
            self, "NotesRole",
            description="oncopipe notes: ingest notes in, scrubbed text and concepts out",
            log_group=log_group, images=[self.image], key=lake.platform_key,
            role_name=ingest_reader_role_name(self.config, "notes"),
        )  # fmt: skip
        ingest = lake.export_bucket(self, lake.ingest, lake.ingest_key)
        quarantine = lake.export_bucket(self, lake.quarantine, lake.ingest_key)
        artifacts = lake.export_bucket(self, lake.artifacts, lake.platform_key)
        grant_objects(role, ingest, list_prefixes=(), read={
            layout.INGEST_NOTES: "Reads the notes.",
            layout.INGEST_SAMPLESHEETS: "Reads the sheet that names a note without a Patient-ID.",
        })  # fmt: skip
        manifests = f"{MANIFEST_ROOT}/"
        grant_objects(
            role, quarantine, delete=True,
            list_prefixes=(manifests, layout.QUARANTINE_SAMPLE_INPUTS),
            read={"": "Reads the route manifests and stage inputs; its quarantine copies."},
            write={"": "Quarantines unreadable notes with the reason; writes its manifests."},
        )  # fmt: skip
        notes = {layout.CURATED_NOTES: "Writes scrubbed notes, concepts and tokens.",
                 manifests: "Writes (and reads) its manifests."}  # fmt: skip
        grant_objects(role, self.curated, read=notes, write=notes, delete=True)
        tokenizer = {f"{layout.ARTIFACTS_TOKENIZERS}notes/": (
            "Stores the notes tokenizer once and reuses it.")}  # fmt: skip
        grant_objects(role, artifacts, read=tokenizer, write=tokenizer, delete=True)
        lake.grant_pseudonym_secret(role)
        acknowledge_job_role(role, log_group, {})
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
        self.notes_step.grant_start(machine)
        grant_batch_sync(machine.role)
        acknowledge_batch_then_processing(machine.role)
        return machine
