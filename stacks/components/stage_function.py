"""StageFunction: a Lambda adapter of a stage core, with the project's baseline."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import (
    Duration,
    aws_ec2 as ec2,
    aws_iam as iam,
    aws_kms as kms,
    aws_lambda as lambda_,
    aws_sqs as sqs,
)
from constructs import Construct

from stacks.bundling import RUNTIME, lambda_code
from stacks.components.log_group import encrypted_log_group
from stacks.nag import acknowledge


def encrypted_queue(
    scope: Construct, construct_id: str, *, key: kms.IKey, dead_letter: bool = True
) -> sqs.Queue:
    """Return an SQS queue with KMS, TLS-only access and 14 days' retention.

    ``dead_letter=True`` marks it as a dead-letter destination (of a function, a rule or a
    state machine), which has no dead-letter queue of its own.
    """
    queue = sqs.Queue(
        scope,
        construct_id,
        encryption=sqs.QueueEncryption.KMS,
        encryption_master_key=key,
        enforce_ssl=True,
        retention_period=Duration.days(14),
    )
    if dead_letter:
        acknowledge(
            queue,
            "AwsSolutions-SQS3",
            "This queue is itself a dead-letter destination; it has none of its own.",
        )
    return queue


class StageFunction(Construct):
    """A Lambda function running ``lambdas/<handler>/handler.py::lambda_handler``.

    Creates: the function (Python runtime of :mod:`stacks.bundling`, code packaged without
    Docker), its own role (logs to its own group, AWS-managed VPC access policy, X-Ray),
    a KMS-encrypted log group, a KMS-encrypted dead-letter queue, reserved concurrency,
    active tracing, environment encrypted with ``key``, private isolated subnets.

    Grants: nothing on data; the caller grants through :attr:`role`
    (:func:`stacks.components.s3_grants.grant_objects`, the pseudonym secret...).
    ``role_name`` names the role, for the ingest readers the ingest bucket policy lists.
    ``outside_vpc_reason`` (with ``vpc=None``) says why the function runs outside the VPC.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        handler: str,
        description: str,
        key: kms.IKey,
        vpc: ec2.IVpc | None,
        subnets: ec2.SubnetSelection | None,
        environment: Mapping[str, str],
        reserved_concurrency: int,
        log_retention_days: int,
        timeout_seconds: int = 120,
        memory_mb: int = 512,
        role_name: str | None = None,
        outside_vpc_reason: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = encrypted_log_group(
            self, "Logs", key=key, retention_days=log_retention_days
        )
        self.dead_letter_queue = encrypted_queue(self, "DeadLetters", key=key)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"oncopipe {handler} function",
            # A name only where a bucket policy must list the role (ingest readers).
            role_name=role_name,
        )
        self.log_group.grant_write(self.role)
        self.function = lambda_.Function(
            self,
            "Function",
            description=description,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,
            code=lambda_code(handler),
            handler=f"lambdas.{handler}.handler.lambda_handler",
            role=self.role,
            timeout=Duration.seconds(timeout_seconds),
            memory_size=memory_mb,
            environment={
                **environment,
                "POWERTOOLS_SERVICE_NAME": handler.replace("_", "-"),
                "POWERTOOLS_LOG_LEVEL": "INFO",
            },
            environment_encryption=key,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            reserved_concurrent_executions=reserved_concurrency,
            dead_letter_queue=self.dead_letter_queue,
            vpc=vpc,
            vpc_subnets=subnets,
        )
        if vpc is None:
            acknowledge(
                self.function,
                "HIPAA.Security-LambdaInsideVPC",
                outside_vpc_reason
                or "S3 Object Lambda's WriteGetObjectResponse endpoint has no VPC endpoint; "
                "this function only receives presigned URLs and answers through that API.",
            )
            return
        acknowledge(
            self.role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole]",
            (
                "AWS-managed policy for the function's network interfaces in the VPC; those "
                "EC2 actions support no resource-level scoping."
            ),
        )
        policy = self.role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords support no resource scoping.",
        )
