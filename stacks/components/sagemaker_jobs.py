"""SageMaker jobs as Step Functions states, and the IAM role such a job runs with."""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    ArnFormat,
    Stack,
    aws_ec2 as ec2,
    aws_ecr_assets as ecr_assets,
    aws_iam as iam,
    aws_kms as kms,
    aws_stepfunctions as sfn,
)
from constructs import Construct

from oncopipe.deployment import EnvConfig
from oncopipe.ops.cost import TAG_STAGE
from stacks.nag import acknowledge

#: The EC2 calls SageMaker makes for a job in a VPC, and the image token and metrics calls;
#: none supports resource-level scoping.
_UNSCOPED_JOB_ACTIONS = [
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
]


def sagemaker_job_role(
    scope: Construct,
    construct_id: str,
    *,
    description: str,
    log_group: str,
    images: list[ecr_assets.DockerImageAsset],
    key: kms.IKey,
    role_name: str | None = None,
) -> iam.Role:
    """A role for SageMaker jobs: pull the images, write the job type's logs, run in the VPC.

    ``log_group`` is SageMaker's group for the job type (``/aws/sagemaker/TrainingJobs``).
    The key encrypts the job's volume and outputs. Bucket grants are the caller's
    (:func:`stacks.components.s3_grants.grant_objects`). ``role_name`` names the role where
    a bucket policy must list it (an ingest reader).
    """
    role = iam.Role(scope, construct_id,
                    assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                    description=description, role_name=role_name)  # fmt: skip
    for image in images:
        image.repository.grant_pull(role)
    key.grant_encrypt_decrypt(role)
    role.add_to_policy(
        iam.PolicyStatement(
            actions=["kms:CreateGrant", "kms:DescribeKey"],
            resources=[key.key_arn],
            conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}},
        )
    )
    role.add_to_policy(
        iam.PolicyStatement(
            actions=[
                "logs:CreateLogGroup",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "logs:DescribeLogStreams",
            ],
            resources=[
                Stack.of(scope).format_arn(
                    service="logs",
                    resource="log-group",
                    resource_name=f"{log_group}:*",
                    arn_format=ArnFormat.COLON_RESOURCE_NAME,
                )
            ],
        )
    )
    role.add_to_policy(iam.PolicyStatement(actions=_UNSCOPED_JOB_ACTIONS, resources=["*"]))
    return role


def acknowledge_job_role(role: iam.Role, log_group: str, grants: dict[str, str]) -> None:
    """Acknowledge the wildcard findings of a job role: the fixed ones and ``grants``."""
    policy = role.node.find_child("DefaultPolicy")
    for finding, reason in {
        "Resource::*": (
            "ecr:GetAuthorizationToken, cloudwatch:PutMetricData and the EC2 network-"
            "interface calls SageMaker makes for VPC jobs support no resource scoping."
        ),
        "Action::kms:GenerateDataKey*": "Encrypts its volume and outputs with the platform key.",
        "Action::kms:ReEncrypt*": "CDK key grant of the volume and output key (platform).",
        "Resource::arn:<AWS::Partition>:logs:<AWS::Region>:<AWS::AccountId>:log-group:"
        f"{log_group}:*": "SageMaker's log group of this job type.",
        **grants,
    }.items():
        acknowledge(policy, f"AwsSolutions-IAM5[{finding}]", reason)


def network_config(security_group: ec2.ISecurityGroup, subnet_ids: list[str]) -> dict[str, Any]:
    """The VpcConfig of a SageMaker job or model."""
    return {"SecurityGroupIds": [security_group.security_group_id], "Subnets": subnet_ids}


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
        arguments_path: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = role
        self.state = sfn.CustomState(
            self,
            construct_id,  # the state's name in the state machine
            state_json={
                "Type": "Task",
                "Resource": "arn:aws:states:::sagemaker:createProcessingJob.sync",
                "Parameters": {
                    # at most 63 characters: prefix + a UUID (36)
                    "ProcessingJobName.$": f"States.Format('{job_prefix}-{{}}', States.UUID())",
                    "RoleArn": role.role_arn,
                    "AppSpecification": {
                        "ImageUri": image.image_uri,
                        # static arguments, or an intrinsic built from the execution
                        **(
                            {"ContainerArguments.$": arguments_path}
                            if arguments_path
                            else {"ContainerArguments": arguments}
                        ),
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
                        "VpcConfig": network_config(security_group, subnet_ids),
                    },
                    "StoppingCondition": {
                        "MaxRuntimeInSeconds": config.processing_max_runtime_minutes * 60
                    },
                    "Environment": environment,
                    # the stage tag is the manifests' step (radiomics-series -> radiomics)
                    "Tags": [
                        {"Key": "project", "Value": config.project},
                        {"Key": TAG_STAGE, "Value": job_prefix.split("-")[0]},
                    ],
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
