"""DriftMonitor and RetrainGate: the model's drift job, its alarm, and the retrain gate.

Drift (issue 12 §4) and the calendar retrain (§5) go through one gate: the drift alarm's
state change to ALARM (an EventBridge rule) and the weekly EventBridge Scheduler schedule
both invoke the gate function (:mod:`lambdas.retrain_gate.handler`). The gate is a Lambda
rather than a Step Functions state machine: its steps are conditional DynamoDB writes
that must be undone together when a later one fails (lease, budget, idempotency key), which
is one short transaction of code, unit-tested end to end on moto, not a workflow to wait on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_cdk import (
    Duration,
    RemovalPolicy,
    Stack,
    aws_cloudwatch as cw,
    aws_dynamodb as dynamodb,
    aws_ec2 as ec2,
    aws_events as events,
    aws_events_targets as targets,
    aws_iam as iam,
    aws_kms as kms,
    aws_s3 as s3,
    aws_scheduler as scheduler,
    aws_sns as sns,
)
from constructs import Construct

from oncopipe import catalog, layout
from oncopipe.deployment import EnvConfig
from oncopipe.monitor.gate import DECISIONS_PREFIX
from oncopipe.monitor.job import (
    BASELINES_PREFIX,
    KIND_THRESHOLDS,
    REPORTS_PREFIX,
    SCORE,
    alarm_distance,
)
from oncopipe.settings import bucket_env
from stacks.components.s3_grants import grant_objects
from stacks.components.stage_function import StageFunction, encrypted_queue
from stacks.nag import acknowledge

#: CloudWatch evaluates a daily metric over at most 7 periods.
MAX_DAILY_WINDOWS = 7


def _metrics_policy(scope: Construct, role: iam.IRole, *extra: iam.PolicyStatement) -> None:
    """Attach PutMetricData (namespace Oncopipe only) and ``extra`` to ``role``."""
    policy = iam.ManagedPolicy(
        scope,
        "ApiPolicy",
        description="oncopipe model monitoring: metrics and APIs without resource scoping",
        statements=[
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringEquals": {"cloudwatch:namespace": "Oncopipe"}},
            ),
            *extra,
        ],
    )
    policy.attach_to_role(role)  # type: ignore[arg-type]
    acknowledge(
        policy,
        "AwsSolutions-IAM5[Resource::*]",
        "cloudwatch:PutMetricData and sagemaker:ListModelPackages support no resource "
        "scoping; PutMetricData is limited to the Oncopipe namespace by condition.",
    )


DISTANCE_TITLES = {"wasserstein": "Wasserstein-1", "js": "Jensen-Shannon", "psi": "PSI"}
#: The alarms' construct IDs and names of the kinds beside VAF.
KIND_ALARMS = {"radiomics": ("RadiomicsDrift", "Radiomic feature"),
               "notes": ("NotesDrift", "Note concept"),
               "predictions": ("PredictionsDrift", "Prediction")}  # fmt: skip


class DriftMonitor(Construct):
    """The daily drift job and its M-of-N alarms.

    Creates: the ``model_drift`` function (:class:`StageFunction`), a daily EventBridge rule
    (01:15 UTC, the previous day's window; retries, dead-letter queue), the alarm on
    ``DriftScore`` (``Monitor=vaf``, daily maximum; M of N windows above
    ``lifecycle.drift_threshold``; missing data, i.e. a window below the minimum samples,
    is not breaching), which starts the retrain gate, and one alarm like it per other kind
    (``Monitor=radiomics``, ``notes``, ``predictions``; thresholds ``thresholds``, default
    :data:`oncopipe.monitor.job.KIND_THRESHOLDS`), which report only.

    Grants the function: read of the curated VAF histograms, radiomics and note concepts,
    of the baselines and (with an ``endpoint_name``) of the endpoint data capture; write of
    the drift reports, ListModelPackages, PutMetricData (namespace ``Oncopipe``).
    ``endpoint_name`` (empty: no endpoint, no predictions window) is the real-time endpoint
    whose captured predictions are monitored.
    Attributes: ``function``, ``alarm`` (VAF), ``alarms`` (by kind, VAF's too), ``rule``.
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
        curated: s3.IBucket,
        artifacts: s3.IBucket,
        model_package_group_name: str,
        endpoint_name: str = "",
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        life = config.lifecycle
        kind_thresholds = {**KIND_THRESHOLDS, **(thresholds or {})}
        if set(kind_thresholds) != set(KIND_ALARMS):
            raise ValueError(f"thresholds: kinds are {', '.join(sorted(KIND_ALARMS))}")
        if life.drift_alarm_of_windows > MAX_DAILY_WINDOWS:
            raise ValueError(
                f"lifecycle.drift_alarm_of_windows: {life.drift_alarm_of_windows} daily windows; "
                f"CloudWatch evaluates at most {MAX_DAILY_WINDOWS} (use 1 to 7)"
            )
        if life.drift_alarm_windows > life.drift_alarm_of_windows:
            raise ValueError(
                "lifecycle.drift_alarm_windows (M) must be <= drift_alarm_of_windows (N)"
            )
        self.function = StageFunction(
            self,
            "Job",
            handler="model_drift",
            description="oncopipe: daily model drift (VAF, radiomics, notes, predictions)",
            key=key,
            vpc=vpc,
            subnets=subnets,
            environment={
                **bucket_env(curated=curated.bucket_name, artifacts=artifacts.bucket_name),
                "MODEL_PACKAGE_GROUP": model_package_group_name,
                "ONCOPIPE_ENV": config.name,
                "DRIFT_THRESHOLD": str(life.drift_threshold),
                "DRIFT_ALARM_WINDOWS": str(life.drift_alarm_windows),
                "DRIFT_ALARM_OF_WINDOWS": str(life.drift_alarm_of_windows),
                "DRIFT_MIN_SAMPLES": str(life.drift_min_samples),
                "DRIFT_KIND_THRESHOLDS": json.dumps(kind_thresholds, sort_keys=True),
                "SERVING_ENDPOINT_NAME": endpoint_name,
                "MPLCONFIGDIR": "/tmp/matplotlib",  # noqa: S108 (Lambda: only /tmp is writable)
            },
            reserved_concurrency=1,
            log_retention_days=config.log_retention_days,
            timeout_seconds=900,
            memory_mb=1024,
        )
        role = self.function.role
        grant_objects(role, curated, read={
            layout.CURATED_GENOMICS_VAF_HISTOGRAMS: "Reads the day's per-sample VAF histograms "
            "(counts only, no identifiers).",
            layout.CURATED_IMAGING_RADIOMICS: "Reads the radiomic features committed that day "
            "(and the table's symlink files that say which).",
            catalog.NOTE_CONCEPTS.prefix: "Reads the note concepts committed that day (and the "
            "table's symlink files that say which)."})  # fmt: skip
        artifacts_read = {BASELINES_PREFIX: "Reads the approved model package's drift baseline."}
        if endpoint_name:
            artifacts_read[layout.ARTIFACTS_DATA_CAPTURE] = (
                "Reads the endpoint's captured responses of the day (predicted probabilities)."
            )
        grant_objects(role, artifacts, read=artifacts_read, write={
            REPORTS_PREFIX: "Writes the daily drift report (JSON and PNG)."})  # fmt: skip
        _metrics_policy(self, role, iam.PolicyStatement(
            actions=["sagemaker:ListModelPackages"], resources=["*"]))  # fmt: skip
        dead_letters = encrypted_queue(self, "ScheduleDeadLetters", key=key)
        self.rule = events.Rule(
            self,
            "Daily",
            description="Evaluate model drift on the previous UTC day's samples",
            schedule=events.Schedule.cron(minute="15", hour="1"),
            targets=[
                targets.LambdaFunction(
                    self.function.function,  # type: ignore[arg-type]
                    dead_letter_queue=dead_letters,  # type: ignore[arg-type]
                    retry_attempts=4,
                    max_event_age=Duration.hours(6),
                )
            ],
        )
        self.alarm = self._alarm(config, "vaf", "VafDrift", "VAF", life.drift_threshold)
        acknowledge(
            self.alarm,
            "HIPAA.Security-CloudWatchAlarmAction",
            "Its action is the EventBridge rule on its state change that starts the retrain "
            "gate (RetrainGate), not an alarm action.",
        )
        self.alarms: dict[str, cw.Alarm] = {"vaf": self.alarm}
        for kind, (alarm_id, title) in KIND_ALARMS.items():
            self.alarms[kind] = self._alarm(config, kind, alarm_id, title, kind_thresholds[kind])
            acknowledge(
                self.alarms[kind],
                "HIPAA.Security-CloudWatchAlarmAction",
                "Reports drift of a model input or of the predictions (alarm state, daily "
                "report) for a person to act on; the retrain gate listens to the VAF alarm only.",
            )

    def _alarm(self, config: EnvConfig, kind: str, construct_id: str, title: str,
               threshold: float) -> cw.Alarm:  # fmt: skip
        life = config.lifecycle
        return cw.Alarm(
            self,
            construct_id,
            alarm_description=(
                f"{title} drift: {DISTANCE_TITLES[alarm_distance(kind)]} > {threshold} in "
                f"{life.drift_alarm_windows} of {life.drift_alarm_of_windows} daily windows "
                f"with >= {life.drift_min_samples} samples"
                + ("; starts the retrain gate" if kind == "vaf" else "")
            ),
            metric=cw.Metric(
                namespace="Oncopipe",
                metric_name=SCORE,
                dimensions_map={"Environment": config.name, "Monitor": kind},
                statistic="Maximum",
                period=Duration.days(1),
            ),
            threshold=threshold,
            evaluation_periods=life.drift_alarm_of_windows,
            datapoints_to_alarm=life.drift_alarm_windows,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )


class RetrainGate(Construct):
    """The retrain gate: lease table, gate function, alarm rule and weekly schedule.

    Creates: the lease table (DynamoDB, partition key ``pk``, KMS ``key``, point-in-time
    recovery, TTL ``expires_at``, retained), the ``retrain_gate`` function, an EventBridge
    rule (``alarm`` to ALARM -> the function), an EventBridge Scheduler schedule
    (``lifecycle.retrain_schedule``, UTC) with its own role, dead-letter queues, and the
    ``topic`` (KMS) that hears when the monthly budget is spent.

    ``sagemaker_pipeline_name`` (the model stack's SageMaker Pipeline) is the retrain
    target. Grants the function: the table, the
    topic, write of decision records, list/read of the curated VAF histograms (the sample
    count), PutMetricData, and start of the target only.
    Attributes: ``table``, ``function``, ``topic``, ``schedule``, ``alarm_rule``.
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
        curated: s3.IBucket,
        artifacts: s3.IBucket,
        alarm: cw.IAlarm,
        model_family: str,
        sagemaker_pipeline_name: str,
        model_package_group_name: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        life = config.lifecycle
        self.table = dynamodb.Table(
            self,
            "Leases",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
            encryption_key=key,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            time_to_live_attribute="expires_at",
            removal_policy=RemovalPolicy.RETAIN,
        )
        acknowledge(
            self.table,
            "HIPAA.Security-DynamoDBInBackupPlan",
            "Retrain leases, budgets and idempotency keys only (no PHI); point-in-time "
            "recovery covers it and every decision is also recorded in the artifacts bucket.",
        )
        self.topic = sns.Topic(self, "BudgetNotices", master_key=key, enforce_ssl=True,
                               display_name="oncopipe retrain budget")  # fmt: skip
        self.function = StageFunction(
            self,
            "Gate",
            handler="retrain_gate",
            description="oncopipe: retrain gate (cooldown, new samples, budget, idempotency)",
            key=key,
            vpc=vpc,
            subnets=subnets,
            environment={
                "MODEL_FAMILY": model_family,
                "RETRAIN_COOLDOWN_HOURS": str(life.retrain_cooldown_hours),
                "RETRAIN_MIN_NEW_SAMPLES": str(life.retrain_min_new_samples),
                "RETRAIN_MONTHLY_BUDGET": str(life.retrain_monthly_budget),
                "PIPELINE_ID": sagemaker_pipeline_name,
                "LEASE_TABLE": self.table.table_name,
                **bucket_env(artifacts=artifacts.bucket_name, curated=curated.bucket_name),
                "NOTIFY_TOPIC_ARN": self.topic.topic_arn,
                "ONCOPIPE_ENV": config.name,
                "MODEL_PACKAGE_GROUP": model_package_group_name or "",
            },
            reserved_concurrency=1,  # triggers are decided one at a time
            log_retention_days=config.log_retention_days,
            timeout_seconds=60,
        )
        role = self.function.role
        self.table.grant(role, "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                         "dynamodb:DeleteItem")  # fmt: skip
        self.topic.grant_publish(role)
        for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*"):
            acknowledge(
                role,
                f"AwsSolutions-IAM5[Action::{action}]",
                "CDK's grants for the lease table and the budget topic, both encrypted with the "
                "platform key: data-key generation and re-encryption under that one key only.",
            )
        grant_objects(role, artifacts, write={
            DECISIONS_PREFIX: "Writes one decision record per retrain trigger."})  # fmt: skip
        grant_objects(role, curated, read={
            layout.CURATED_GENOMICS_VAF_HISTOGRAMS: "Counts the samples called so far (one "
            "histogram each) for the new-samples rule."})  # fmt: skip
        _metrics_policy(self, role, *(
            [iam.PolicyStatement(actions=["sagemaker:ListModelPackages"], resources=["*"])]
            if model_package_group_name else []
        ))  # fmt: skip
        if model_package_group_name:
            # the approved version's test AUC becomes the pipeline's ApprovedAuc parameter
            grant_objects(role, artifacts, read={
                layout.ARTIFACTS_EVALUATION: "Reads the approved version's evaluation report "
                "(its AUC is the floor a retrained candidate must reach)."})  # fmt: skip
            role.add_to_principal_policy(iam.PolicyStatement(
                actions=["sagemaker:DescribeModelPackage"],
                resources=[Stack.of(self).format_arn(
                    service="sagemaker", resource="model-package",
                    resource_name=f"{model_package_group_name}/*")],
            ))  # fmt: skip
            acknowledge(
                role,
                "AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:sagemaker:<AWS::Region>:"
                f"<AWS::AccountId>:model-package/{model_package_group_name}/*]",
                "Reads the approved version of its own model package group (any version).",
            )
        role.add_to_principal_policy(iam.PolicyStatement(
            actions=["sagemaker:StartPipelineExecution"],
            resources=[Stack.of(self).format_arn(
                service="sagemaker", resource="pipeline",
                resource_name=sagemaker_pipeline_name.lower())],
        ))  # fmt: skip

        function = self.function.function
        rule_dead_letters = encrypted_queue(self, "TriggerDeadLetters", key=key)
        self.alarm_rule = events.Rule(
            self,
            "OnDriftAlarm",
            description="The drift alarm went to ALARM: ask the retrain gate",
            event_pattern=events.EventPattern(
                source=["aws.cloudwatch"],
                detail_type=["CloudWatch Alarm State Change"],
                resources=[alarm.alarm_arn],
                detail={"state": {"value": ["ALARM"]}},
            ),
            targets=[targets.LambdaFunction(
                function, dead_letter_queue=rule_dead_letters,  # type: ignore[arg-type]
                retry_attempts=8, max_event_age=Duration.hours(12))],
        )  # fmt: skip
        scheduler_role = iam.Role(
            self,
            "ScheduleRole",
            assumed_by=iam.ServicePrincipal(
                "scheduler.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            ),
            description="oncopipe retrain schedule: invokes the retrain gate only",
        )
        function.grant_invoke(scheduler_role)
        rule_dead_letters.grant_send_messages(scheduler_role)
        acknowledge(
            scheduler_role,
            f"AwsSolutions-IAM5[Resource::<{_logical_id(function)}.Arn>:*]",
            "lambda:InvokeFunction on the gate function and its versions (CDK's grant_invoke).",
        )
        for action in ("kms:GenerateDataKey*", "kms:ReEncrypt*"):
            acknowledge(
                scheduler_role,
                f"AwsSolutions-IAM5[Action::{action}]",
                "Sends to the schedule's dead-letter queue, encrypted with the platform key "
                "(CDK's grant_send_messages): that one key only.",
            )
        self.schedule = scheduler.CfnSchedule(
            self,
            "Weekly",
            description="Calendar retrain: ask the retrain gate",
            schedule_expression=life.retrain_schedule,
            schedule_expression_timezone="UTC",
            flexible_time_window=scheduler.CfnSchedule.FlexibleTimeWindowProperty(mode="OFF"),
            target=scheduler.CfnSchedule.TargetProperty(
                arn=function.function_arn,
                role_arn=scheduler_role.role_arn,
                input=json.dumps(
                    {"source": "schedule", "scheduled_time": "<aws.scheduler.scheduled-time>"}
                ),
                retry_policy=scheduler.CfnSchedule.RetryPolicyProperty(
                    maximum_event_age_in_seconds=6 * 3600, maximum_retry_attempts=8
                ),
                dead_letter_config=scheduler.CfnSchedule.DeadLetterConfigProperty(
                    arn=rule_dead_letters.queue_arn
                ),
            ),
        )


def _logical_id(function: Any) -> str:
    """Return the CloudFormation logical ID of a Lambda function construct."""
    child = function.node.default_child
    return str(Stack.of(child).get_logical_id(child))
