"""Scheduled ops functions: CloudFormation drift detection and the Batch queue watch.

Both run outside the VPC: the private isolated subnets have no CloudFormation or Batch
interface endpoint (and no internet route), and these functions call only those control
planes (plus S3 for the drift report, a de-identified description of infrastructure). They
read no patient data.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import (
    Duration,
    Stack,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_kms as kms,
    aws_s3 as s3,
)
from constructs import Construct

from oncopipe.deployment import EnvConfig
from oncopipe.ops.batch_queue import QueueWatchSettings
from oncopipe.ops.drift import DriftSettings
from stacks.components.s3_grants import grant_objects
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.nag import acknowledge

#: Prefix of the artifacts bucket the drift reports are written under.
DRIFT_REPORT_PREFIX = "ops/drift/"
#: Minutes between two Batch queue watches.
BATCH_WATCH_MINUTES = 5
#: Seconds the drift function may run (Lambda's maximum: detection takes minutes).
DRIFT_TIMEOUT_S = 900

_OUTSIDE_VPC = (
    "Calls only the {api} control plane, which has no interface endpoint in the private "
    "isolated subnets (no internet route); it reads no patient data."
)


def _schedule(
    scope: Construct,
    construct_id: str,
    function: StageFunction,
    key: kms.IKey,
    rate: Duration,
    description: str,
) -> events.Rule:
    """Return a rule invoking ``function`` at ``rate``, failed deliveries to a dead-letter queue."""
    dead_letters = encrypted_queue(scope, f"{construct_id}DeadLetters", key=key)
    return events.Rule(
        scope,
        construct_id,
        description=description,
        schedule=events.Schedule.rate(rate),
        targets=[
            targets.LambdaFunction(
                function.function,
                dead_letter_queue=dead_letters,
                retry_attempts=2,
                max_event_age=Duration.hours(1),
            )
        ],
    )


class ScheduledDriftCheck(Construct):
    """The ``ops_drift`` function, run every ``config.ops.drift_check_hours`` hours.

    Grants: CloudFormation drift detection on the app's stacks
    (``arn:...:stack/Oncopipe-<env>-*/*``), read access to the resource types drift detection
    compares through the AWS-managed ``SecurityAudit`` policy (configuration metadata, not
    data: ReadOnlyAccess would read objects and secrets), and writing the report under
    ``ops/drift/`` of the artifacts bucket (with its key, through S3 only).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        artifacts: s3.IBucket,
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        settings = DriftSettings.for_config(config, artifacts.bucket_name)
        self.function = StageFunction(
            self,
            "Function",
            handler="ops_drift",
            description="oncopipe: scheduled CloudFormation drift detection of every stack",
            key=key,
            vpc=None,
            subnets=None,
            outside_vpc_reason=_OUTSIDE_VPC.format(api="CloudFormation"),
            environment=settings.as_env(),
            reserved_concurrency=1,
            log_retention_days=config.log_retention_days,
            timeout_seconds=DRIFT_TIMEOUT_S,
        )
        role = self.function.role
        stacks_arn = stack.format_arn(
            service="cloudformation", resource="stack", resource_name=f"Oncopipe-{config.name}-*/*"
        )
        role.add_to_policy(
            iam.PolicyStatement(
                actions=[
                    "cloudformation:DetectStackDrift",
                    "cloudformation:DetectStackResourceDrift",
                    "cloudformation:DescribeStackResourceDrifts",
                    "cloudformation:DescribeStacks",
                    "cloudformation:ListStackResources",
                ],
                resources=[stacks_arn],
            )
        )
        # DescribeStackDriftDetectionStatus has no resource type in IAM: "*" is the only scope.
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["cloudformation:DescribeStackDriftDetectionStatus"], resources=["*"]
            )
        )
        role.add_managed_policy(iam.ManagedPolicy.from_aws_managed_policy_name("SecurityAudit"))
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/SecurityAudit]",
            "Drift detection reads each resource's live configuration with the caller's "
            "permissions; SecurityAudit grants that configuration metadata for every type the "
            "stacks use, and no data (objects, secrets, queue messages).",
        )
        grant_objects(
            role, artifacts, write={DRIFT_REPORT_PREFIX: "Writes the daily drift report."}
        )
        policy = role.node.find_child("DefaultPolicy")
        acknowledge(
            policy,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords and CloudFormation "
            "DescribeStackDriftDetectionStatus support no resource scoping.",
        )
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:cloudformation:<AWS::Region>:"
            f"<AWS::AccountId>:stack/Oncopipe-{config.name}-*/*]",
            "Drift detection covers every stack of this environment (and their nested "
            "stacks), named Oncopipe-<env>-<kind>.",
        )
        self.rule = _schedule(
            self,
            "Schedule",
            self.function,
            key,
            Duration.hours(config.ops.drift_check_hours),
            "oncopipe: scheduled drift detection",
        )


class BatchQueueWatch(Construct):
    """The ``ops_batch_queue`` function, every :data:`BATCH_WATCH_MINUTES` minutes.

    Publishes the age of the oldest RUNNABLE job of each queue (``BatchOldestRunnableSeconds``,
    dimensions Environment and JobQueue). Grants ``batch:ListJobs`` (no resource scoping).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        job_queue_arns: Sequence[str],
        key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        settings = QueueWatchSettings(environment=config.name, queues=tuple(job_queue_arns))
        self.function = StageFunction(
            self,
            "Function",
            handler="ops_batch_queue",
            description="oncopipe: age of the oldest RUNNABLE job per Batch job queue",
            key=key,
            vpc=None,
            subnets=None,
            outside_vpc_reason=_OUTSIDE_VPC.format(api="AWS Batch"),
            environment=settings.as_env(),
            reserved_concurrency=1,
            log_retention_days=config.log_retention_days,
            timeout_seconds=60,
            memory_mb=256,
        )
        self.function.role.add_to_policy(
            iam.PolicyStatement(actions=["batch:ListJobs"], resources=["*"])
        )
        acknowledge(
            self.function.role.node.find_child("DefaultPolicy"),
            "AwsSolutions-IAM5[Resource::*]",
            "batch:ListJobs and X-Ray PutTraceSegments/PutTelemetryRecords support no "
            "resource scoping.",
        )
        self.rule = _schedule(
            self,
            "Schedule",
            self.function,
            key,
            Duration.minutes(BATCH_WATCH_MINUTES),
            "oncopipe: Batch RUNNABLE age",
        )
