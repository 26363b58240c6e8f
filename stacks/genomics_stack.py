"""Genomics on AWS Batch: spot-first compute, job definitions, the job image, and the
state machine that aligns and calls a sample sheet (whole genomes as array jobs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import (
    Aws,
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
    aws_stepfunctions as sfn,
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from oncopipe import layout
from oncopipe.deployment import EnvConfig, ScatterConfig
from oncopipe.genomics.scatter_stage import SETTINGS_ENV
from oncopipe.layout import plan_key
from oncopipe.manifest import MANIFEST_ROOT
from oncopipe.ops.cost import (
    ENV_JOB_MEMORY_MIB,
    ENV_JOB_VCPUS,
    TAG_RUN_ID,
    TAG_SAMPLE,
    TAG_STAGE,
)
from oncopipe.settings import bucket_env
from stacks.components.ingest_readers import ingest_reader_role_name
from stacks.components.log_group import encrypted_log_group
from stacks.components.s3_grants import grant_key_via_s3, grant_objects, objects_finding
from stacks.data_lake_stack import DataLakeStack
from stacks.nag import acknowledge
from stacks.paths import REPO_ROOT

#: Arguments of the per-sample jobs, filled from the Batch job parameters.
_SAMPLE_COMMAND = ["--run-id", "Ref::run_id", "--sample-table", "Ref::sample_table",
                   "--sample", "Ref::sample"]  # fmt: skip
#: The region steps' argument: how many regions the tumour's plan calls over.
_REGIONS_COMMAND = ["--regions", "Ref::regions"]
#: The image's build context: only oncopipe/ and batch_jobs/ (Docker ignore syntax).
IMAGE_EXCLUDES = ["*", "!oncopipe", "!batch_jobs", "**/__pycache__", "oncopipe/local"]
#: The plan job streams the FASTQ pair once and splits it (the checks in one thread,
#: ISA-L inflate and deflate in worker threads beside it): it needs neither the
#: aligner's vCPUs nor its memory.
PLAN_VCPUS = 2
PLAN_MEMORY_MIB = 4096
#: Batch jobs one sample can run in turn (plan, align-shard, gather, call-region,
#: call-gather): with the attempts and the attempt timeout, the state machine's timeout.
_SEQUENTIAL_JOBS = 5
#: Where a Batch task state submits and waits (what ``BatchSubmitJob`` renders for RUN_JOB).
_SUBMIT_SYNC = f"arn:{Aws.PARTITION}:states:::batch:submitJob.sync"
#: The Batch parameters every genomics job takes (``Ref::`` in the job command), from the
#: state of one Map iteration.
_ITEM_PARAMETERS = {"run_id.$": "$.run_id", "sample_table.$": "$.sample_table",
                    "sample.$": "$.sample"}  # fmt: skip
#: What a hand-written Batch state keeps of the job description: its status only (a
#: CustomState cannot discard with ``ResultPath: null``; the description repeats the job's
#: parameters).
_ARRAY_RESULT = {"ResultSelector": {"status.$": "$.Status"}, "ResultPath": "$.array_job"}
#: The regions parameter of the region steps: Batch parameters are strings.
_REGIONS_PARAMETER = {"regions.$": "States.Format('{}', $.scatter.plan.regions)"}


def scatter_environment(scatter: ScatterConfig) -> dict[str, str]:
    """Return the job environment carrying ``config.scatter`` (what the plan step reads,
    :func:`oncopipe.genomics.scatter_stage.settings_from_env`).

    A threshold of 0 ("always scatter") is passed as 1, the same decision for any FASTQ
    pair or reference: the job's settings take positive integers only.
    """
    values = {
        "pairs_per_shard": scatter.align_pairs_per_shard,
        "scatter_min_fastq_bytes": max(1, scatter.scatter_min_fastq_bytes),
        "call_regions": scatter.call_regions,
        "scatter_min_reference_bases": max(1, scatter.scatter_min_reference_bases),
    }
    return {SETTINGS_ENV[name]: str(value) for name, value in values.items()}


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
        - The whole-genome phases (:mod:`oncopipe.genomics.scatter_stage`), on the same image
          and with the same retry strategy: ``plan_job`` (small: decides and splits),
          ``align_shard_job`` (an array job's child per shard), ``gather_job``,
          ``call_region_job`` (an array job's child per region) and ``call_gather_job``.
          Batch applies the retry strategy to each array child, so a child whose spot
          instance is reclaimed is retried alone. Every genomics job carries
          ``config.scatter`` in its environment (:func:`scatter_environment`).
        - ``state_machine`` (``GenomicsStateMachine``, input ``run_id``, ``sample_table``,
          ``sample_tags`` and ``tumour_tags`` (``[{"sample": id, "tag": obj-...}]``, mapped
          over; the tag is the jobs' ``oncopipe:sample`` cost tag), and ``sample_ids`` /
          ``tumour_ids``: the router's result for an accepted sheet):
          :meth:`_state_machine`. Logs (ALL, KMS) and X-Ray on.

    Grants (:func:`stacks.components.s3_grants.grant_objects`, prefix by prefix):
        - align job (``job_role``, the ingest reader named for the ingest bucket policy):
          read ``fastq/*`` of ingest; read and write ``reference/*`` of artifacts (the BWA
          index is built once and stored there); write ``genomics/bam/*`` and
          ``_manifests/*`` of curated; read the sheets' stage inputs
          (``_sample-inputs/*``) and write the quarantine zone (invalid FASTQ); read and
          write the scatter scratch (``genomics/_scatter/*``: shards, shard BAMs, plans).
        - call job (``call_role``): read the reference, the stage inputs and the BAMs;
          write ``genomics/vcf/*``, ``genomics/variants/*`` and ``_manifests/*``; read and
          write the scatter scratch (region VCFs). It never reads ingest.
        - the plan, align-shard and gather jobs run as the align job's role, the
          call-region and call-gather jobs as the call job's.
        - state machine: submit to the genomics queue and wait (``.sync``); ``s3:GetObject``
          on ``genomics/_scatter/*`` of curated (the plan documents) and ``kms:Decrypt``
          through S3 for that bucket only.
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
        self._job_steps: dict[str, str] = {}  # job definition id -> its step (cost tag)
        ingest = lake.export_bucket(self, lake.ingest, lake.ingest_key)
        quarantine = lake.export_bucket(self, lake.quarantine, lake.ingest_key)
        curated = lake.export_bucket(self, lake.curated, lake.curated_key)
        artifacts = lake.export_bucket(self, lake.artifacts, lake.platform_key)

        self.job_role = self._align_role(config, ingest, quarantine, curated, artifacts)
        # opaque references of the ingest FASTQ files in its curated manifests
        lake.grant_pseudonym_secret(self.job_role)
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
            **bucket_env(
                ingest=ingest.bucket_name,
                quarantine=quarantine.bucket_name,
                curated=curated.bucket_name,
                artifacts=artifacts.bucket_name,
            ),
            "REFERENCE_PREFIX": layout.ARTIFACTS_REFERENCE,
        }
        # every genomics job sees config.scatter (the local worker gives each the same)
        genomics_env = {**environment, **scatter_environment(config.scatter)}
        self.align_job = self._job(
            "AlignJob", ["batch_jobs.genomics", "align", *_SAMPLE_COMMAND], image, logs,
            {**genomics_env, "PSEUDONYM_SECRET_ARN": lake.pseudonym_secret.secret_arn},
            config, role=self.job_role, vcpus=config.align_vcpus,
            memory_mib=config.align_memory_mib,
        )  # fmt: skip
        self.imaging_job = self.imaging_jobs(
            config=config, lake=lake, curated=curated, image=image,
            logs=logs, environment=environment,
        )  # fmt: skip
        self.call_job = self._job(
            "CallJob", ["batch_jobs.genomics", "call", *_SAMPLE_COMMAND], image, logs, genomics_env,
            config, role=self.call_role, vcpus=config.call_vcpus, memory_mib=config.call_memory_mib,
        )  # fmt: skip
        self._scatter_jobs(config, lake, image, logs, genomics_env)
        self.state_machine = self._state_machine(config, lake, curated)

    def _scatter_jobs(
        self,
        config: EnvConfig,
        lake: DataLakeStack,
        image: ecr_assets.DockerImageAsset,
        logs: Any,
        env: dict[str, str],
    ) -> None:
        """The job definitions of the whole-genome phases (see the class docstring)."""

        def command(step: str, *extra: str) -> list[str]:
            return ["batch_jobs.genomics", step, *_SAMPLE_COMMAND, *extra]

        def aligning(
            construct_id: str, step: str, job_env: dict[str, str]
        ) -> batch.EcsJobDefinition:
            return self._job(construct_id, command(step), image, logs, job_env, config,
                             role=self.job_role, vcpus=config.align_vcpus,
                             memory_mib=config.align_memory_mib)  # fmt: skip

        def calling(construct_id: str, step: str) -> batch.EcsJobDefinition:
            return self._job(construct_id, command(step, *_REGIONS_COMMAND), image, logs, env,
                             config, role=self.call_role, vcpus=config.call_vcpus,
                             memory_mib=config.call_memory_mib)  # fmt: skip

        self.plan_job = self._job(
            "PlanJob", command("plan"), image, logs, env, config, role=self.job_role,
            vcpus=min(PLAN_VCPUS, config.align_vcpus),
            memory_mib=min(PLAN_MEMORY_MIB, config.align_memory_mib),
        )  # fmt: skip
        self.align_shard_job = aligning("AlignShardJob", "align-shard", env)
        # the gather commits the BAM and its manifest (opaque references of the FASTQ)
        secret = {"PSEUDONYM_SECRET_ARN": lake.pseudonym_secret.secret_arn}
        self.gather_job = aligning("GatherJob", "gather", {**env, **secret})
        self.call_region_job = calling("CallRegionJob", "call-region")
        self.call_gather_job = calling("CallGatherJob", "call-gather")

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
        _grant_scratch(role, curated, "Splits FASTQ into shards, aligns them, gathers "
                       "their BAMs; writes each sample's plan document.")  # fmt: skip
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
        _grant_scratch(role, curated, "Calls regions into region VCFs and gathers them.")
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
        """A job definition on the job image: spot reclaims retried, anything else exits.

        Its environment names its reservation (the cost estimate of each job,
        :func:`oncopipe.ops.cost.batch_job_profile`); its step (``command[1]``) is the
        ``oncopipe:stage`` cost-allocation tag of the jobs submitted with it.
        """
        self._job_steps[construct_id] = command[1]
        reservation = {ENV_JOB_VCPUS: str(vcpus), ENV_JOB_MEMORY_MIB: str(memory_mib)}
        container = batch.EcsEc2ContainerDefinition(
            self,
            f"{construct_id}Container",
            image=ecs.ContainerImage.from_docker_image_asset(image),
            cpu=vcpus,
            memory=Size.mebibytes(memory_mib),
            job_role=role,
            environment={**environment, **reservation, "THREADS": str(vcpus)},
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

    # -- the state machine ------------------------------------------------------------------

    def _state_machine(
        self, config: EnvConfig, lake: DataLakeStack, curated: s3.IBucket
    ) -> sfn.StateMachine:
        """Align every sample of a sheet, then call every tumour; whole genomes scattered.

        Per sample (a Map iteration): ``Plan`` (Batch), ``ReadPlan`` (the plan document,
        ``s3:GetObject`` + ``States.StringToJson``: no Lambda), then the Choice
        ``AlignScatters``: FASTQ of at least ``config.scatter.scatter_min_fastq_bytes``
        split into 2 or more shards -> ``AlignShards`` (an array job, size = the planned
        shards) -> ``Gather``; into 1 shard -> ``AlignOneShard`` (Batch arrays have 2
        children or more) -> ``Gather``; otherwise ``Align`` (one job, the panel path).
        Per tumour: ``ReadCallPlan``, then ``CallScatters``: 2 regions or more ->
        ``CallRegions`` (an array job, size = the planned regions) -> ``CallGather``;
        otherwise ``Call``. Any failure after retries ends in ``GenomicsFailed``.
        """
        failed = sfn.Fail(
            self,
            "GenomicsFailed",
            error="GenomicsFailed",
            # The Batch cause repeats the job (its parameters, reasons): the error name only.
            cause_path="$.genomics_error.Error",
            comment="A Batch job failed after its retries; see the job's log",
        )
        align = self._each_item("AlignSamples", "$.sample_tags", self._align_flow(config, curated))
        call = self._each_item("CallTumours", "$.tumour_tags", self._call_flow(curated))
        for each in (align, call):
            each.add_catch(failed, errors=["States.ALL"], result_path="$.genomics_error")
        done = sfn.Succeed(self, "SampleSheetGenomicsDone", comment="BAMs, VCFs, variant tables")
        logs_group = encrypted_log_group(
            self, "StateMachineLogs", key=lake.platform_key,
            retention_days=config.log_retention_days,
        )  # fmt: skip
        # each of a sample's jobs may use all its attempts; a year is the service's limit
        budget = _SEQUENTIAL_JOBS * config.batch_spot_retries * config.batch_job_timeout_minutes
        machine = sfn.StateMachine(
            self,
            "GenomicsStateMachine",
            definition_body=sfn.DefinitionBody.from_chainable(align.next(call).next(done)),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.minutes(min(budget, 365 * 24 * 60)),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=logs_group, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
            comment="oncopipe genomics: align and call a sample sheet (whole genomes scattered)",
        )
        grant_batch_sync(machine.role)
        self._grant_array_submit(machine.role)
        # the jobs it submits carry the cost-allocation tags (Batch tags them on creation)
        machine.role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["batch:TagResource"],
                resources=[self.format_arn(service="batch", resource="job", resource_name="*")],
                conditions={"StringEquals": {"batch:CreateAction": "SubmitJob"}},
            )
        )
        # the plan documents only: GetObject (CallAwsService's statement) and the key via S3
        grant_key_via_s3(machine.role, curated, decrypt=True)
        policy = machine.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[{objects_finding(curated, f'{layout.CURATED_GENOMICS_SCRATCH}*')}]",
            "Reads each sample's plan document (genomics/_scatter/<run>/<sample>/plan.json) "
            "to choose one job or an array job and to size the array.",
        )
        for finding, reason in {
            "Resource::*": (
                "CloudWatch Logs delivery and X-Ray actions of Step Functions and "
                "batch:DescribeJobs support no resource-level scoping."
            ),
            "Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job/*": (
                "Terminates the Batch jobs it waits for when the execution is stopped; job "
                "IDs are generated by Batch."
            ),
            "Resource::arn:<AWS::Partition>:batch:<AWS::Region>:<AWS::AccountId>:job-definition/*": (  # noqa: E501
                "The Step Functions Batch integration submits by job-definition revision; the "
                "queue it submits to is scoped to the genomics queue."
            ),
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
        return machine

    def _each_item(self, construct_id: str, items_path: str, flow: sfn.IChainable) -> sfn.Map:
        """A Map over ``[{"sample": id, "tag": pseudonymous key}]``: each iteration's state
        is ``sample``, ``run_id``, ``sample_table`` (the jobs' parameters) and
        ``sample_key`` (the jobs' sample cost tag); outputs are discarded (they are in S3)."""
        each = sfn.Map(
            self,
            construct_id,
            items_path=items_path,
            max_concurrency=50,
            item_selector={
                "sample": sfn.JsonPath.string_at("$$.Map.Item.Value.sample"),
                "run_id": sfn.JsonPath.string_at("$.run_id"),
                "sample_table": sfn.JsonPath.string_at("$.sample_table"),
                "sample_key": sfn.JsonPath.string_at("$$.Map.Item.Value.tag"),
            },
            result_path=sfn.JsonPath.DISCARD,
        )
        each.item_processor(flow)
        return each

    def _align_flow(self, config: EnvConfig, curated: s3.IBucket) -> sfn.IChainable:
        """One sample: plan, then one align job or shards + gather (see _state_machine)."""
        plan = self._submit("Plan", self.plan_job)
        whole_genome = sfn.Condition.number_greater_than_equals(
            "$.scatter.plan.fastq_bytes", config.scatter.scatter_min_fastq_bytes
        )
        shards = "$.scatter.plan.shards"
        gather = self._submit("Gather", self.gather_job)
        scatters = (
            sfn.Choice(self, "AlignScatters", comment="Whole genome (split by the plan) or panel")
            .when(
                sfn.Condition.and_(
                    whole_genome, sfn.Condition.number_greater_than_equals(shards, 2)
                ),
                self._array_job("AlignShards", self.align_shard_job, shards).next(gather),
            )
            .when(
                sfn.Condition.and_(whole_genome, sfn.Condition.number_equals(shards, 1)),
                self._one_child("AlignOneShard", self.align_shard_job, "align-shard").next(gather),
            )
            .otherwise(self._submit("Align", self.align_job))
        )
        return plan.next(self._read_plan("ReadPlan", curated)).next(scatters)

    def _call_flow(self, curated: s3.IBucket) -> sfn.IChainable:
        """One tumour: its plan's regions decide one call job or regions + gather."""
        regions = "$.scatter.plan.regions"
        scatters = (
            sfn.Choice(self, "CallScatters", comment="Reference long enough to call by region")
            .when(
                sfn.Condition.number_greater_than_equals(regions, 2),
                self._array_job(
                    "CallRegions", self.call_region_job, regions, _REGIONS_PARAMETER
                ).next(self._submit("CallGather", self.call_gather_job, _REGIONS_PARAMETER)),
            )
            .otherwise(self._submit("Call", self.call_job))
        )
        return self._read_plan("ReadCallPlan", curated).next(scatters)

    def _read_plan(self, construct_id: str, curated: s3.IBucket) -> tasks.CallAwsService:
        """Read the sample's plan document into ``$.scatter.plan`` (the job's stdout is
        not visible to Step Functions; the document is ~100 bytes of JSON)."""
        read = tasks.CallAwsService(
            self,
            construct_id,
            comment="The plan step's document: shards, regions, fastq_bytes, reference_bases",
            service="s3",
            action="getObject",
            parameters={
                "Bucket": curated.bucket_name,
                "Key": sfn.JsonPath.format(
                    plan_key("{}", "{}"),
                    sfn.JsonPath.string_at("$.run_id"),
                    sfn.JsonPath.string_at("$.sample"),
                ),
            },
            iam_resources=[curated.arn_for_objects(f"{layout.CURATED_GENOMICS_SCRATCH}*")],
            result_selector={"plan": sfn.JsonPath.string_to_json(sfn.JsonPath.string_at("$.Body"))},
            result_path="$.scatter",
        )
        read.add_retry(
            errors=["S3.S3Exception", "S3.SdkClientException"],
            interval=Duration.seconds(2),
            max_attempts=4,
            backoff_rate=2.0,
            jitter_strategy=sfn.JitterType.FULL,
        )
        return read

    def _submit(
        self,
        construct_id: str,
        job: batch.EcsJobDefinition,
        extra: Mapping[str, str] | None = None,
    ) -> tasks.BatchSubmitJob:
        """Submit one job with the item's parameters and wait for it (``.sync``)."""
        parameters: dict[str, Any] = {
            name.removesuffix(".$"): sfn.JsonPath.string_at(path)
            for name, path in _ITEM_PARAMETERS.items()
        }
        for name, value in (extra or {}).items():
            # an intrinsic (States.Format) is passed through as the path CDK renders
            parameters[name.removesuffix(".$")] = sfn.JsonPath.string_at(value)
        task = tasks.BatchSubmitJob(
            self,
            construct_id,
            job_name=construct_id,
            job_queue_arn=self.job_queue.job_queue_arn,
            job_definition_arn=job.job_definition_arn,
            payload=sfn.TaskInput.from_object(parameters),
            tags={TAG_RUN_ID: sfn.JsonPath.string_at("$.run_id"),
                  TAG_STAGE: self._job_steps[job.node.id],
                  TAG_SAMPLE: sfn.JsonPath.string_at("$.sample_key")},
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            result_path=sfn.JsonPath.DISCARD,
        )  # fmt: skip
        _retry_submit(task)
        return task

    def _array_job(
        self,
        construct_id: str,
        job: batch.EcsJobDefinition,
        size_path: str,
        extra: Mapping[str, str] | None = None,
    ) -> sfn.CustomState:
        """Submit an array job of ``size_path`` children and wait for all of them.

        ``BatchSubmitJob`` takes a fixed array size only, so the state is written here; its
        permissions are :meth:`_grant_array_submit`'s. Each child runs with
        ``AWS_BATCH_JOB_ARRAY_INDEX`` and is retried alone by the job definition's
        strategy (a spot reclaim); a child that still fails fails the array job.
        """
        return self._custom_submit(construct_id, job, {
            "ArrayProperties": {"Size.$": size_path},
            "Parameters": {**_ITEM_PARAMETERS, **(extra or {})},
        })  # fmt: skip

    def _one_child(
        self, construct_id: str, job: batch.EcsJobDefinition, step: str
    ) -> sfn.CustomState:
        """Submit child 0 of ``job`` as a plain job (``--index 0``): a split of one shard."""
        command = ["batch_jobs.genomics", step, *_SAMPLE_COMMAND, "--index", "0"]
        # the job definition's command with its Ref:: parameters taken from the state
        elements = [f"$.{c.removeprefix('Ref::')}" if c.startswith("Ref::") else f"'{c}'"
                    for c in command]  # fmt: skip
        return self._custom_submit(construct_id, job, {
            "ContainerOverrides": {"Command.$": f"States.Array({', '.join(elements)})"},
            "Parameters": dict(_ITEM_PARAMETERS),
        })  # fmt: skip

    def _custom_submit(
        self, construct_id: str, job: batch.EcsJobDefinition, parameters: dict[str, Any]
    ) -> sfn.CustomState:
        """A hand-written ``submitJob.sync`` state of ``job`` on the genomics queue, with the
        cost-allocation tags, keeping only the job's status; retried like the others."""
        state = sfn.CustomState(
            self,
            construct_id,
            state_json={
                "Type": "Task",
                "Resource": _SUBMIT_SYNC,
                "Parameters": {
                    "JobName": construct_id,
                    "JobQueue": self.job_queue.job_queue_arn,
                    "JobDefinition": job.job_definition_arn,
                    **parameters,
                    "Tags": self._cost_tags(job),
                },
                **_ARRAY_RESULT,
            },
        )
        _retry_submit(state)
        return state

    def _cost_tags(self, job: batch.EcsJobDefinition) -> dict[str, str]:
        """The cost-allocation tags of a hand-written Batch state (run id, step)."""
        return {f"{TAG_RUN_ID}.$": "$.run_id", TAG_STAGE: self._job_steps[job.node.id],
                f"{TAG_SAMPLE}.$": "$.sample_key"}  # fmt: skip

    def _grant_array_submit(self, role: iam.IRole) -> None:
        """What the hand-written Batch states need: submit the scatter job definitions to
        the genomics queue and the Step Functions rule that reports job completion."""
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["batch:SubmitJob"],
                resources=[self.job_queue.job_queue_arn, self.align_shard_job.job_definition_arn,
                           self.call_region_job.job_definition_arn],
            )
        )  # fmt: skip
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    self.format_arn(
                        service="events",
                        resource="rule",
                        resource_name="StepFunctionsGetEventsForBatchJobsRule",
                    )
                ],
            )
        )


def _retry_submit(state: sfn.CustomState | tasks.BatchSubmitJob) -> None:
    """Retry a Batch submission the service refused (throttling, a transient error).

    A job that ran and failed is not retried here: Batch's retry strategy already retried
    its spot reclaims, and anything else is a failure a user should see.
    """
    state.add_retry(
        errors=["Batch.AWSBatchException"],
        interval=Duration.seconds(10),
        max_attempts=5,
        backoff_rate=2.0,
        max_delay=Duration.minutes(5),
        jitter_strategy=sfn.JitterType.FULL,
    )


def _grant_scratch(role: iam.IRole, curated: s3.IBucket, reason: str) -> None:
    """Read and write the scatter scratch (``genomics/_scatter/*`` of curated) and nothing
    wider: no deletes (the scratch expires by lifecycle; a redone part overwrites)."""
    grant_objects(
        role,
        curated,
        read={layout.CURATED_GENOMICS_SCRATCH: reason},
        write={layout.CURATED_GENOMICS_SCRATCH: reason},
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
