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
from stacks.components.log_group import encrypted_log_group
from stacks.data_lake_stack import DataLakeStack
from stacks.nag import acknowledge, bucket_objects_finding
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

    Grants (job role): read ``fastq/*`` of ingest; read and write ``reference/*`` of
    artifacts (the BWA index is built once and stored there); read the sample tables and
    write ``genomics/*`` and ``_manifests/*`` of curated; write quarantine (invalid FASTQ).
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

        self.job_role = iam.Role(
            self,
            "JobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="oncopipe genomics jobs: FASTQ in, BAM/VCF/Parquet out",
        )
        ingest.grant_read(self.job_role, f"{layout.INGEST_FASTQ}*")
        artifacts.grant_read_write(self.job_role, f"{layout.ARTIFACTS_REFERENCE}*")
        curated.grant_read(self.job_role, f"{layout.CURATED_SAMPLES}*")
        curated.grant_read_write(self.job_role, "genomics/*")
        curated.grant_read_write(self.job_role, "_manifests/*")
        quarantine.grant_write(self.job_role)
        policy = self.job_role.node.find_child("DefaultPolicy")
        for finding, reason in {
            "Action::s3:GetObject*": "CDK grants, each on one prefix listed below.",
            "Action::s3:GetBucket*": "CDK grants, each on one prefix listed below.",
            "Action::s3:List*": "CDK grants, each on one prefix listed below.",
            "Action::s3:DeleteObject*": "Deletes a failed item's partial outputs (genomics/).",
            "Action::s3:Abort*": "Aborts its own multipart uploads of BAMs.",
            "Action::kms:GenerateDataKey*": "Writes objects encrypted with the zone's key.",
            "Action::kms:ReEncrypt*": "CDK key grant for objects of the granted prefixes.",
            bucket_objects_finding(ingest, f"{layout.INGEST_FASTQ}*"): "Reads FASTQ only.",
            bucket_objects_finding(artifacts, f"{layout.ARTIFACTS_REFERENCE}*"): (
                "Reads the reference and stores its BWA index once, beside it."
            ),
            bucket_objects_finding(curated, f"{layout.CURATED_SAMPLES}*"): (
                "Reads the pseudonymised sample table of its run."
            ),
            bucket_objects_finding(curated, "genomics/*"): "Writes BAM, VCF and variant tables.",
            bucket_objects_finding(curated, "_manifests/*"): "Writes its items' manifests.",
            bucket_objects_finding(quarantine): "Quarantines an invalid FASTQ pair with why.",
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)

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
            environment, config, role=self.job_role, vcpus=config.align_vcpus,
            memory_mib=config.align_memory_mib,
        )  # fmt: skip
        self.imaging_job = self.imaging_jobs(
            config=config, lake=lake, quarantine=quarantine, curated=curated, image=image,
            logs=logs, environment=environment,
        )  # fmt: skip
        self.call_job = self._job(
            "CallJob", ["batch_jobs.genomics", "call", *_SAMPLE_COMMAND], image, logs, environment,
            config, role=self.job_role, vcpus=config.call_vcpus, memory_mib=config.call_memory_mib,
        )  # fmt: skip

    def imaging_jobs(
        self,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        quarantine: s3.IBucket,
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
        quarantine.grant_read(role, "_manifests/*")
        curated.grant_read(role, f"{layout.CURATED_IMAGING}dicom/*")
        curated.grant_read_write(role, f"{layout.CURATED_IMAGING_VOLUMES}*")
        curated.grant_read_write(role, f"{layout.CURATED_IMAGING}masks/*")
        curated.grant_read_write(role, "_manifests/*")
        policy = role.node.find_child("DefaultPolicy")
        for finding, reason in {
            "Action::s3:GetObject*": "CDK grants, each on one prefix listed below.",
            "Action::s3:GetBucket*": "CDK grants, each on one prefix listed below.",
            "Action::s3:List*": "CDK grants, each on one prefix listed below.",
            "Action::s3:DeleteObject*": "Deletes a failed item's partial outputs.",
            "Action::s3:Abort*": "Aborts its own multipart uploads.",
            "Action::kms:GenerateDataKey*": "Writes objects encrypted with the zone's key.",
            "Action::kms:ReEncrypt*": "CDK key grant for objects of the granted prefixes.",
            bucket_objects_finding(quarantine, "_manifests/*"): "Reads the deid manifests.",
            bucket_objects_finding(curated, f"{layout.CURATED_IMAGING}dicom/*"): (
                "Reads de-identified DICOM only."
            ),
            bucket_objects_finding(curated, f"{layout.CURATED_IMAGING_VOLUMES}*"): (
                "Writes the Parquet volumes."
            ),
            bucket_objects_finding(curated, f"{layout.CURATED_IMAGING}masks/*"): "Writes masks.",
            bucket_objects_finding(curated, "_manifests/*"): "Writes its items' manifests.",
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
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
