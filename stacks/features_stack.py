"""Feature stages on SageMaker Processing and the daily workflow that runs them."""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    ArnFormat,
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
from stacks.components.stage_function import encrypted_queue
from stacks.data_lake_stack import DataLakeStack
from stacks.genomics_stack import GenomicsStack
from stacks.nag import acknowledge, bucket_objects_finding
from stacks.paths import REPO_ROOT

#: The processing image's build context: only oncopipe/ and processing/ (Docker syntax).
PROCESSING_IMAGE_EXCLUDES = ["*", "!oncopipe", "!processing", "**/__pycache__", "oncopipe/local"]


class ProcessingStep(Construct):
    """One SageMaker Processing job as a Step Functions task (``createProcessingJob.sync``).

    CDK has no task construct for processing jobs, so the state is written in the
    Amazon States Language; the state machine's permissions come from
    :meth:`grant_start`.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        job_prefix: str,
        image: ecr_assets.DockerImageAsset,
        arguments: list[str],
        role: iam.IRole,
        config: EnvConfig,
        environment: dict[str, str],
        security_group: ec2.ISecurityGroup,
        subnet_ids: list[str],
        volume_key_arn: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = role
        self.state = sfn.CustomState(
            self,
            "Task",
            state_json={
                "Type": "Task",
                "Resource": "arn:aws:states:::sagemaker:createProcessingJob.sync",
                "Parameters": {
                    # at most 63 characters: prefix + a UUID (36)
                    "ProcessingJobName.$": f"States.Format('{job_prefix}-{{}}', States.UUID())",
                    "RoleArn": role.role_arn,
                    "AppSpecification": {
                        "ImageUri": image.image_uri,
                        "ContainerArguments": arguments,
                    },
                    "ProcessingResources": {
                        "ClusterConfig": {
                            "InstanceCount": 1,
                            "InstanceType": config.processing_instance_type,
                            "VolumeSizeInGB": config.processing_volume_gb,
                            "VolumeKmsKeyId": volume_key_arn,
                        }
                    },
                    "NetworkConfig": {
                        "EnableInterContainerTrafficEncryption": True,
                        "VpcConfig": {
                            "SecurityGroupIds": [security_group.security_group_id],
                            "Subnets": subnet_ids,
                        },
                    },
                    "StoppingCondition": {
                        "MaxRuntimeInSeconds": config.processing_max_runtime_minutes * 60
                    },
                    "Environment": environment,
                    "Tags": [{"Key": "project", "Value": config.project}],
                },
                "ResultPath": None,
                "Retry": [
                    {
                        "ErrorEquals": ["SageMaker.AmazonSageMakerException"],
                        "IntervalSeconds": 60,
                        "MaxAttempts": 3,
                        "BackoffRate": 2.0,
                    }
                ],
            },
        )

    def grant_start(self, grantee: iam.IGrantable) -> None:
        """Let a state machine start, watch and stop this step's jobs."""
        stack = Stack.of(self)
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateProcessingJob",
                    "sagemaker:DescribeProcessingJob",
                    "sagemaker:StopProcessingJob",
                    "sagemaker:AddTags",
                ],
                resources=[
                    stack.format_arn(
                        service="sagemaker", resource="processing-job", resource_name="*"
                    )
                ],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"],
                resources=[
                    stack.format_arn(
                        service="events",
                        resource="rule",
                        resource_name="StepFunctionsGetEventsForSageMakerProcessingJobsRule",
                    )
                ],
            )
        )
        grantee.grant_principal.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            )
        )


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
            self, "Radiomics", job_prefix="radiomics", arguments=["stage"], **common
        )
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
        role = iam.Role(
            self,
            "ProcessingRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="oncopipe SageMaker Processing: volumes and masks in, features out",
        )
        curated = self.curated
        curated.grant_read(role, f"{layout.CURATED_IMAGING_VOLUMES}*")
        curated.grant_read(role, f"{layout.CURATED_IMAGING}masks/*")
        curated.grant_read_write(role, f"{layout.CURATED_IMAGING_RADIOMICS}*")
        curated.grant_read_write(role, "_manifests/*")
        self.image.repository.grant_pull(role)
        lake.platform_key.grant_encrypt_decrypt(role)  # the job's encrypted volume
        stack = Stack.of(self)
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "logs:CreateLogGroup",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                    "logs:DescribeLogStreams",
                ],
                resources=[
                    stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="/aws/sagemaker/ProcessingJobs:*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "ecr:GetAuthorizationToken",
                    "cloudwatch:PutMetricData",
                    "ec2:CreateNetworkInterface",
                    "ec2:CreateNetworkInterfacePermission",
                    "ec2:DeleteNetworkInterface",
                    "ec2:DeleteNetworkInterfacePermission",
                    "ec2:DescribeNetworkInterfaces",
                    "ec2:DescribeVpcs",
                    "ec2:DescribeDhcpOptions",
                    "ec2:DescribeSubnets",
                    "ec2:DescribeSecurityGroups",
                ],
                resources=["*"],
            )
        )
        policy = role.node.find_child("DefaultPolicy")
        for finding, reason in {
            "Resource::*": (
                "ecr:GetAuthorizationToken, cloudwatch:PutMetricData and the EC2 network-"
                "interface calls SageMaker makes for VPC jobs support no resource scoping."
            ),
            "Action::s3:GetObject*": "CDK grants, each on one prefix listed below.",
            "Action::s3:GetBucket*": "CDK grants, each on one prefix listed below.",
            "Action::s3:List*": "CDK grants, each on one prefix listed below.",
            "Action::s3:DeleteObject*": "Deletes a failed item's partial outputs.",
            "Action::s3:Abort*": "Aborts its own multipart uploads.",
            "Action::kms:GenerateDataKey*": "Writes objects and its volume with the zone's key.",
            "Action::kms:ReEncrypt*": "CDK key grant for objects of the granted prefixes.",
            "Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:"
            "/aws/sagemaker/ProcessingJobs:*": "SageMaker's log group of processing jobs.",
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
        }.items():
            acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)
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
        ).add_catch(failed, result_path="$.error")
        radiomics = self.radiomics_step.state
        radiomics.add_catch(failed, errors=["States.ALL"], result_path="$.error")
        definition = volumes.next(radiomics).next(
            sfn.Succeed(self, "FeaturesWritten", comment="volumes, masks, radiomics")
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
            comment="oncopipe daily features: imaging volumes, then radiomics",
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
