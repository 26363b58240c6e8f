"""Genomics on AWS Batch: spot-first compute, job definitions, the job image."""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    Duration,
    IgnoreMode,
    Size,
    Stack,
    aws_batch as batch,
    aws_ec2 as ec2,
    aws_ecr_assets as ecr_assets,
    aws_ecs as ecs,
    aws_iam as iam,
    aws_s3 as s3,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.deployment import EnvConfig
from oncopipe.manifest import MANIFEST_ROOT
from stacks.components.ingest_readers import ingest_reader_role_name
from stacks.components.log_group import encrypted_log_group
from stacks.components.s3_grants import grant_objects
from stacks.data_lake_stack import DataLakeStack
from stacks.nag import acknowledge
from stacks.paths import REPO_ROOT

#: Arguments of the per-sample jobs, filled from the Batch job parameters.
_SAMPLE_COMMAND = ["--run-id", "Ref::run_id", "--sample-table", "Ref::sample_table",
                   "--sample", "Ref::sample"]  # fmt: skip
#: The image's build context: only oncopipe/ and batch_jobs/ (Docker ignore syntax).
IMAGE_EXCLUDES = ["*", "!oncopipe", "!batch_jobs", "**/__pycache__", "oncopipe/local"]


class GenomicsStack(Stack):
    """Alignment and variant calling jobs on AWS Batch.

    Creates:
        - A launch template: encrypted gp3 volume of ``batch_scratch_gb``, IMDSv2 only.
        - Two managed EC2 compute environments in the private isolated subnets: spot
          (``SPOT_PRICE_CAPACITY_OPTIMIZED``) and on-demand (``BEST_FIT_PROGRESSIVE``),
          instance types and max vCPUs from the configuration.
        - ``job_queue``: spot first, on-demand as fallback.
        - ``align_job`` and ``call_job``: the job image (``batch_jobs/Dockerfile``, built at
          deploy), vCPU/memory from the configuration, timeouts, a retry strategy that
          retries spot reclaims (status reason ``Host EC2*``) and exits on anything else,
          logs to a KMS-encrypted log group.

    Grants (:func:`stacks.components.s3_grants.grant_objects`, prefix by prefix):
        - align job (``job_role``, the ingest reader named for the ingest bucket policy):
          read ``fastq/*`` of ingest; read and write ``reference/*`` of artifacts (the BWA
          index is built once and stored there); write ``genomics/bam/*`` and
          ``_manifests/*`` of curated; read the sheets' stage inputs
          (``_sample-inputs/*``) and write the quarantine zone (invalid FASTQ).
        - call job (``call_role``): read the reference, the stage inputs and the BAMs;
          write ``genomics/vcf/*``, ``genomics/variants/*`` and ``_manifests/*``. It never
          reads ingest.
        - imaging job: read the de-identification manifests and de-identified
          DICOM; write volumes, masks and manifests of curated.
          No grant on the PHI zone or the ingest key.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        ingest = lake.export_bucket(self, lake.ingest, lake.ingest_key)
        quarantine = lake.export_bucket(self, lake.quarantine, lake.ingest_key)
        curated = lake.export_bucket(self, lake.curated, lake.curated_key)
        artifacts = lake.export_bucket(self, lake.artifacts, lake.platform_key)

        self.job_role = self._align_role(config, ingest, quarantine, curated, artifacts)
        from stacks.ingest_stack import grant_pseudonym_secret  # (ingest_stack imports us)

        # opaque references of the ingest FASTQ files in its curated manifests
        grant_pseudonym_secret(lake, self.job_role)
        self.call_role = self._call_role(quarantine, curated, artifacts)

        template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            require_imdsv2=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        config.batch_scratch_gb,
                        volume_type=ec2.EbsDeviceVolumeType.GP3,
                        encrypted=True,
                        delete_on_termination=True,
                    ),
                )
            ],
        )
        # The subnets have no route out: egress reaches only the VPC endpoints (interface
        # endpoints in the VPC, S3 through the gateway's prefix-list route).
        security_group = ec2.SecurityGroup(
            self,
            "JobSecurityGroup",
            vpc=vpc,
            description="Batch genomics instances: no ingress; egress to VPC endpoints",
            allow_all_outbound=True,
        )
        instance_types = [ec2.InstanceType(t) for t in config.batch_instance_types]
        common: dict[str, Any] = {
            "vpc": vpc,
            "vpc_subnets": subnets,
            "launch_template": template,
            "security_groups": [security_group],
            "instance_types": instance_types,
            "use_optimal_instance_classes": False,
            "maxv_cpus": config.batch_max_vcpus,
            "minv_cpus": 0,
            "update_to_latest_image_version": True,
        }
        spot = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "SpotCompute",
            spot=True,
            allocation_strategy=batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED,
            **common,
        )
        on_demand = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "OnDemandCompute",
            spot=False,
            allocation_strategy=batch.AllocationStrategy.BEST_FIT_PROGRESSIVE,
            **common,
        )
        for compute in (spot, on_demand):
            acknowledge(
                compute.node.find_child("InstanceProfileRole"),
                "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                "AmazonEC2ContainerServiceforEC2Role]",
                "AWS-managed policy the ECS agent of Batch instances needs to register and "
                "report; the jobs use their own job role.",
            )
        self.job_queue = batch.JobQueue(
            self,
            "JobQueue",
            priority=1,
            compute_environments=[
                batch.OrderedComputeEnvironment(compute_environment=spot, order=1),
                batch.OrderedComputeEnvironment(compute_environment=on_demand, order=2),
            ],
        )
        image = ecr_assets.DockerImageAsset(
            self,
            "JobImage",
            directory=str(REPO_ROOT),
            file="batch_jobs/Dockerfile",
            exclude=IMAGE_EXCLUDES,
            ignore_mode=IgnoreMode.DOCKER,
            platform=ecr_assets.Platform.LINUX_AMD64,
        )
        logs = encrypted_log_group(
            self, "JobLogs", key=lake.platform_key, retention_days=config.log_retention_days
        )
        environment = {
            "INGEST_BUCKET": ingest.bucket_name,
            "QUARANTINE_BUCKET": quarantine.bucket_name,
            "CURATED_BUCKET": curated.bucket_name,
            "ARTIFACTS_BUCKET": artifacts.bucket_name,
            "REFERENCE_PREFIX": layout.ARTIFACTS_REFERENCE,
        }
        self.align_job = self._job(
            "AlignJob", ["batch_jobs.genomics", "align", *_SAMPLE_COMMAND], image, logs,
            {**environment, "PSEUDONYM_SECRET_ARN": lake.pseudonym_secret.secret_arn},
            config, role=self.job_role, vcpus=config.align_vcpus,
            memory_mib=config.align_memory_mib,
        )  # fmt: skip
        self.imaging_job = self.imaging_jobs(
            config=config, lake=lake, curated=curated, image=image,
            logs=logs, environment=environment,
        )  # fmt: skip
        self.call_job = self._job(
            "CallJob", ["batch_jobs.genomics", "call", *_SAMPLE_COMMAND], image, logs, environment,
            config, role=self.call_role, vcpus=config.call_vcpus, memory_mib=config.call_memory_mib,
        )  # fmt: skip

    def _align_role(
        self,
        config: EnvConfig,
        ingest: s3.IBucket,
        quarantine: s3.IBucket,
        curated: s3.IBucket,
        artifacts: s3.IBucket,
    ) -> iam.Role:
        """The align job's role: the only genomics role that reads FASTQ (ingest)."""
        role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="oncopipe align job: FASTQ in, BAM out; invalid FASTQ to quarantine",
            role_name=ingest_reader_role_name(config, "align_job"),
        )
        grant_objects(role, ingest, read={layout.INGEST_FASTQ: "Reads FASTQ only."},
                      list_prefixes=())  # fmt: skip
        reference = layout.ARTIFACTS_REFERENCE
        grant_objects(
            role,
            artifacts,
            delete=True,
            read={reference: "Reads the reference and its BWA index."},
            write={reference: "Stores the BWA index once, beside the reference."},
        )
        grant_objects(
            role, quarantine, delete=True, list_prefixes=(layout.QUARANTINE_SAMPLE_INPUTS,),
            read={"": "Reads the stage inputs of its sheet and its quarantine copies back."},
            write={"": "Quarantines an invalid FASTQ pair with the reason."},
        )  # fmt: skip
        outputs = {layout.CURATED_GENOMICS_BAM: "Writes BAMs, their index and QC.",
                   f"{MANIFEST_ROOT}/": "Writes (and reads) its items' manifests."}  # fmt: skip
        grant_objects(role, curated, read=outputs, write=outputs, delete=True)
        return role

    def _call_role(
        self, quarantine: s3.IBucket, curated: s3.IBucket, artifacts: s3.IBucket
    ) -> iam.Role:
        """The call job's role: BAMs and the reference in, variants out; no FASTQ read."""
        role = iam.Role(
            self,
            "CallJobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="oncopipe call job: BAM and reference in, VCF and variant tables out",
        )
        reference = layout.ARTIFACTS_REFERENCE
        grant_objects(role, artifacts, read={reference: "Reads the reference and its index."})
        grant_objects(
            role, quarantine, list_prefixes=(layout.QUARANTINE_SAMPLE_INPUTS,),
            read={layout.QUARANTINE_SAMPLE_INPUTS: "Reads the stage inputs of its sheet."},
        )  # fmt: skip
        grant_objects(role, curated, read={layout.CURATED_GENOMICS_BAM: "Reads the BAMs."})
        outputs = {layout.CURATED_GENOMICS_VCF: "Writes VCFs and their index.",
                   layout.CURATED_GENOMICS_VARIANTS: "Writes the Parquet variant tables.",
                   layout.CURATED_GENOMICS_VAF_HISTOGRAMS:
                       "Writes each called sample's VAF histogram (the drift monitor's input).",
                   f"{MANIFEST_ROOT}/": "Writes (and reads) its items' manifests."}  # fmt: skip
        grant_objects(role, curated, read=outputs, write=outputs, delete=True)
        return role

    def imaging_jobs(
        self,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        curated: s3.IBucket,
        image: ecr_assets.DockerImageAsset,
        logs: Any,
        environment: dict[str, str],
    ) -> batch.EcsJobDefinition:
        """The daily imaging job: de-identified series -> Parquet volumes and masks."""
        role = iam.Role(
            self,
            "ImagingJobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="oncopipe imaging jobs: de-identified DICOM in, volumes and masks out",
        )
        # The de-identification manifests are in curated (opaque refs): this role has no
        # grant on the PHI zone's buckets and none on the ingest key.
        grant_objects(
            role,
            curated,
            read={f"{layout.CURATED_IMAGING}dicom/": "Reads de-identified DICOM."},
        )
        outputs = {layout.CURATED_IMAGING_VOLUMES: "Writes the Parquet volumes.",
                   f"{layout.CURATED_IMAGING}masks/": "Writes the masks.",
                   f"{MANIFEST_ROOT}/": "Writes (and reads) its items' manifests."}  # fmt: skip
        grant_objects(role, curated, read=outputs, write=outputs, delete=True)
        return self._job(
            "ImagingJob", ["batch_jobs.imaging", "volumes"], image, logs, environment, config,
            role=role, vcpus=config.call_vcpus, memory_mib=config.call_memory_mib,
        )  # fmt: skip

    def _job(
        self,
        construct_id: str,
        command: list[str],
        image: ecr_assets.DockerImageAsset,
        logs: Any,
        environment: dict[str, str],
        config: EnvConfig,
        *,
        role: iam.IRole,
        vcpus: int,
        memory_mib: int,
    ) -> batch.EcsJobDefinition:
        """A job definition on the job image: spot reclaims retried, anything else exits."""
        container = batch.EcsEc2ContainerDefinition(
            self,
            f"{construct_id}Container",
            image=ecs.ContainerImage.from_docker_image_asset(image),
            cpu=vcpus,
            memory=Size.mebibytes(memory_mib),
            job_role=role,
            environment={**environment, "THREADS": str(vcpus)},
            command=command,
            logging=ecs.LogDriver.aws_logs(stream_prefix=command[1], log_group=logs),
            readonly_root_filesystem=False,
        )
        execution_policy = container.execution_role.node.find_child("DefaultPolicy")
        acknowledge(
            execution_policy,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken has no resource-level scoping; image pulls are "
            "scoped to the job image's repository.",
        )
        return batch.EcsJobDefinition(
            self,
            construct_id,
            container=container,
            timeout=Duration.minutes(config.batch_job_timeout_minutes),
            retry_attempts=config.batch_spot_retries,
            retry_strategies=[
                batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.SPOT_INSTANCE_RECLAIMED),
                batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom(on_reason="*")),
            ],
            propagate_tags=True,
        )


def grant_batch_sync(role: iam.IRole) -> None:
    """What a state machine needs besides CDK's ``BatchSubmitJob`` grant for ``.sync``.

    Step Functions describes the job it waits for and terminates it when the execution
    is stopped (AWS "IAM policies for AWS Batch" of Step Functions); CDK grants neither.
    ``DescribeJobs`` has no resource-level permissions; ``TerminateJob`` is scoped to jobs.
    """
    stack = Stack.of(role)
    role.add_to_principal_policy(
        iam.PolicyStatement(actions=["batch:DescribeJobs"], resources=["*"])
    )
    role.add_to_principal_policy(
        iam.PolicyStatement(
            actions=["batch:TerminateJob"],
            resources=[stack.format_arn(service="batch", resource="job", resource_name="*")],
        )
    )


def acknowledge_batch_then_processing(role: iam.IRole) -> None:
    """Acknowledge the wildcards of a state machine role that runs a Batch job (``.sync``)
    and then a SageMaker Processing job: each is one the services leave no way to scope."""
    policy = role.node.find_child("DefaultPolicy")
    for finding, reason in {
        "Resource::*": (
            "CloudWatch Logs delivery and X-Ray actions of Step Functions and "
            "batch:DescribeJobs support no resource-level scoping."
        ),
        "Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job/*": (
            "Terminates the Batch job it waits for when the execution is stopped; job "
            "IDs are generated by Batch."
        ),
        "Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job-definition/*": (
            "The Step Functions Batch integration submits by job-definition revision; the "
            "queue it submits to is scoped to the genomics queue."
        ),
        "Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:<AWS::AccountId>:"
        "processing-job/*": ("Processing job names are generated per execution (prefix + UUID)."),
    }.items():
        acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
