"""SeriesImaging: a DICOM series' volume, masks and radiomics once it settled.

The event-driven imaging path of :mod:`oncopipe.settle`: the de-identification function
counts each instance in the settle table and sends a timer to the settle queue (an SQS
delay queue); the settle function consumes the timers and, once no instance arrived for
the settle time, starts this construct's state machine for the series. The daily imaging
state machine stays as the sweeper for anything missed.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import (
    Duration,
    RemovalPolicy,
    aws_dynamodb as dynamodb,
    aws_ec2 as ec2,
    aws_kms as kms,
    aws_lambda_event_sources as sources,
    aws_sqs as sqs,
    aws_stepfunctions as sfn,
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from oncopipe.deployment import EnvConfig
from oncopipe.settle import (
    DEFAULT_LEASE_SECONDS,
    QUEUE_ENV,
    SECONDS_ENV,
    STATE_MACHINE_ENV,
    TABLE_ENV,
    TTL_ATTRIBUTE,
)
from stacks.components.log_group import encrypted_log_group
from stacks.components.sagemaker_jobs import ProcessingStep
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.genomics_stack import acknowledge_batch_then_processing, grant_batch_sync
from stacks.nag import acknowledge

STRING = dynamodb.AttributeType.STRING
#: How many series of one settled structure set convert at once.
SERIES_CONCURRENCY = 4


class SeriesImaging(Construct):
    """The settle table and queue, the settle function and the per-series state machine.

    Creates:
        - ``table``: the tracker (``patient_key`` + ``series``; pseudonymous keys and
          de-identified UIDs only), on demand, encrypted with ``key``, point-in-time
          recovery, items expiring through TTL (``expires_at``).
        - ``queue``: the settle timers (KMS, TLS only, a dead-letter queue after 5
          receives; visibility above the function's timeout).
        - ``function``: ``lambdas/series_settle`` on the queue (batches of 10, partial
          batch responses), in the private subnets.
        - ``state_machine`` (``SeriesImaging``): for each target series of the input
          ``{"run_id", "patient_key", "series": [...], "generation"}``, the imaging Batch
          job with ``--series`` then the radiomics processing job with ``--series``, each
          retried on throttling; a failure ends in a visible failed execution.

    Grants: the function reads and conditionally updates the table, receives/sends on
    the queue and starts this state machine only; :meth:`grant_timer_start` gives the
    de-identification role what :func:`oncopipe.settle.after_deid` needs.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        key: kms.IKey,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        job_queue_arn: str,
        imaging_job_definition_arn: str,
        processing: dict[str, Any],
    ) -> None:
        super().__init__(scope, construct_id)
        self.settle_seconds = config.series_settle_seconds
        self.table = dynamodb.Table(
            self,
            "SettleTable",
            partition_key=dynamodb.Attribute(
                name="patient_key", type=dynamodb.AttributeType.STRING
            ),
            sort_key=dynamodb.Attribute(name="series", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute=TTL_ATTRIBUTE,
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.table,
            "HIPAA.Security-DynamoDBInBackupPlan",
            "The settle tracker holds only pseudonymous keys, de-identified UIDs and counters; "
            "point-in-time recovery covers restores and the daily sweep converts any series "
            "a lost tracker would miss.",
        )
        self.dead_letters = encrypted_queue(self, "SettleDeadLetters", key=key)
        self.queue = sqs.Queue(
            self,
            "SettleQueue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=key,
            enforce_ssl=True,
            retention_period=Duration.days(4),
            visibility_timeout=Duration.seconds(6 * 60),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=5, queue=self.dead_letters),
        )
        self.state_machine = self._state_machine(
            config, key, job_queue_arn, imaging_job_definition_arn, processing
        )
        self.settle = StageFunction(
            self,
            "SeriesSettle",
            handler="series_settle",
            description="oncopipe: start a DICOM series' imaging once it settled",
            key=key,
            vpc=vpc,
            subnets=subnets,
            environment={
                **self.timer_environment(),
                STATE_MACHINE_ENV: self.state_machine.state_machine_arn,
            },
            reserved_concurrency=config.lambda_reserved_concurrency,
            log_retention_days=config.log_retention_days,
            timeout_seconds=60,
        )
        self.function = self.settle.function
        self.table.grant(
            self.settle.role, "dynamodb:GetItem", "dynamodb:Query", "dynamodb:UpdateItem"
        )
        self.queue.grant_send_messages(self.settle.role)
        self.state_machine.grant_start_execution(self.settle.role)
        self.function.add_event_source(
            sources.SqsEventSource(self.queue, batch_size=10, report_batch_item_failures=True)
        )
        _acknowledge_key_grant(self.settle)

    def timer_environment(self) -> dict[str, str]:
        """The environment :class:`oncopipe.settle.SettleSettings` reads (the de-id path's)."""
        return {
            TABLE_ENV: self.table.table_name,
            QUEUE_ENV: self.queue.queue_url,
            SECONDS_ENV: str(self.settle_seconds),
        }

    def grant_timer_start(self, function: StageFunction) -> None:
        """Let ``function`` record instances and start timers (:func:`after_deid`).

        Adds :meth:`timer_environment` to it; grants GetItem and UpdateItem on the table
        and SendMessage on the queue (with the key's encrypt use), nothing else.
        """
        for name, value in self.timer_environment().items():
            function.function.add_environment(name, value)
        self.table.grant(function.role, "dynamodb:GetItem", "dynamodb:UpdateItem")
        self.queue.grant_send_messages(function.role)
        _acknowledge_key_grant(function)

    def _state_machine(
        self,
        config: EnvConfig,
        key: kms.IKey,
        job_queue_arn: str,
        imaging_job_definition_arn: str,
        processing: dict[str, Any],
    ) -> sfn.StateMachine:
        failed = sfn.Fail(
            self, "SeriesFailed", error="SeriesImagingFailed",
            cause="the series' volume or radiomics job failed; see its logs",
        )  # fmt: skip
        volumes = tasks.BatchSubmitJob(
            self,
            "SeriesVolumes",
            job_name="imaging-series-volumes",
            job_queue_arn=job_queue_arn,
            job_definition_arn=imaging_job_definition_arn,
            container_overrides=tasks.BatchContainerOverrides(
                command=sfn.JsonPath.list_at("$.command")
            ),
            integration_pattern=sfn.IntegrationPattern.RUN_JOB,
            result_path=sfn.JsonPath.DISCARD,
        )
        volumes.add_retry(errors=["Batch.AWSBatchException"], interval=Duration.seconds(30),
                          max_attempts=3, backoff_rate=2.0)  # fmt: skip
        self.radiomics_step = ProcessingStep(
            self,
            "SeriesRadiomics",
            job_prefix="radiomics-series",
            arguments=[],
            arguments_path=(
                "States.Array('processing.radiomics', 'stage', '--run-id', $.run_id, "
                "'--series', $.series)"
            ),
            **processing,
        )
        each = sfn.Map(
            self,
            "EachSeries",
            items_path="$.series",
            item_selector={
                "run_id": sfn.JsonPath.string_at("$.run_id"),
                "series": sfn.JsonPath.string_at("$$.Map.Item.Value"),
                "command": sfn.JsonPath.array(
                    "batch_jobs.imaging",
                    "volumes",
                    "--run-id",
                    sfn.JsonPath.string_at("$.run_id"),
                    "--series",
                    sfn.JsonPath.string_at("$$.Map.Item.Value"),
                ),
            },
            max_concurrency=SERIES_CONCURRENCY,
            result_path=sfn.JsonPath.DISCARD,
        )
        each.item_processor(volumes.next(self.radiomics_step.state))
        each.add_catch(failed, result_path="$.error")
        definition = each.next(sfn.Succeed(self, "SeriesConverted"))
        logs = encrypted_log_group(
            self, "StateMachineLogs", key=key, retention_days=config.log_retention_days
        )
        machine = sfn.StateMachine(
            self,
            "SeriesImaging",
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            state_machine_type=sfn.StateMachineType.STANDARD,
            timeout=Duration.seconds(
                max(DEFAULT_LEASE_SECONDS, config.processing_max_runtime_minutes * 60)
                + config.batch_job_timeout_minutes * 60
            ),
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=logs, level=sfn.LogLevel.ALL, include_execution_data=False
            ),
            comment="oncopipe: one settled DICOM series' volume and masks, then its radiomics",
        )
        self.radiomics_step.grant_start(machine)
        grant_batch_sync(machine.role)
        acknowledge_batch_then_processing(machine.role)
        return machine


def _acknowledge_key_grant(function: StageFunction) -> None:
    """Acknowledge CDK's grant on the platform key that the table and queue use."""
    policy = function.role.node.find_child("DefaultPolicy")
    for action in ("GenerateDataKey*", "ReEncrypt*"):
        acknowledge(
            policy,
            f"AwsSolutions-IAM5[Action::kms:{action}]",
            "CDK's grant on the platform key for the settle table (DynamoDB encrypts items "
            "with it on the caller's behalf) and the settle queue's messages; scoped to "
            "that one key.",
        )
