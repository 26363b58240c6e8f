"""The ops stack: alarm topic, alarms, the pipeline dashboard, scheduled drift detection.

Built last: it walks the other stacks (:func:`stacks.components.ops_watch.discover`) for
what to watch, so a new stage's dead-letter queue, state machine, Batch job queue or
endpoint gets its alarm and its dashboard graph without editing this stack.

Alarms (each notifies the topic on ALARM and on OK):

- every dead-letter queue: ``ApproximateNumberOfMessagesVisible >= 1``;
- every state machine: ``ExecutionsFailed >= 1`` and ``ExecutionsTimedOut >= 1``;
- every Batch job queue: oldest RUNNABLE job older than ``ops.batch_runnable_alarm_minutes``
  (published by the Batch queue watch: Batch has no such metric);
- every stage: ``100 * ItemsQuarantined / ItemsIn > ops.quarantine_alarm_percent`` over an
  hour (no items: not breaching);
- every endpoint variant: ``Invocation5XXErrors >= 1`` and p95 ``ModelLatency`` above
  ``ops.endpoint_p95_latency_ms``;
- drift: ``CriticalDriftedResources >= 1`` and ``DriftDetectionErrors >= 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import (
    Duration,
    Stack,
    aws_cloudwatch as cw,
    aws_cloudwatch_actions as cw_actions,
    aws_lambda as lambda_,
    aws_sqs as sqs,
    aws_stepfunctions as sfn,
)
from constructs import Construct

from oncopipe import metrics as m
from oncopipe.deployment import EnvConfig
from stacks.components.ops_dashboard import (
    StageDashboard,
    batch_age_metric,
    drift_metric,
    endpoint_metric,
    stage_metric,
)
from stacks.components.ops_schedule import BatchQueueWatch, ScheduledDriftCheck
from stacks.components.ops_topic import AlarmTopic
from stacks.components.ops_watch import Discovered, discover
from stacks.data_lake_stack import DataLakeStack

_GTE = cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
_GT = cw.ComparisonOperator.GREATER_THAN_THRESHOLD


def add_metrics_environment(stacks: Sequence[Stack], environment: str) -> None:
    """Set ``ONCOPIPE_ENV`` on every Lambda function of ``stacks`` (metric Environment)."""
    for stack in stacks:
        for node in stack.node.find_all():
            if isinstance(node, lambda_.Function):
                node.add_environment(m.ENV_ENVIRONMENT, environment)


class OpsStack(Stack):
    """Alarms, their topic, the dashboard and the scheduled checks of one environment.

    Attributes: ``topic`` (:class:`AlarmTopic`), ``drift`` (:class:`ScheduledDriftCheck`),
    ``batch_watch`` (:class:`BatchQueueWatch`, None without job queues), ``watched``
    (what :func:`discover` found), ``alarms`` (every alarm), ``dashboard``.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvConfig,
        lake: DataLakeStack,
        watch: Sequence[Stack],
        **kwargs: object,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)  # type: ignore[arg-type]
        self.config = config
        self.alarms: list[cw.Alarm] = []
        self.topic = AlarmTopic(
            self, "Alarms", prefix=config.prefix, emails=config.ops.alarm_emails
        )
        artifacts = lake.export_bucket(self, lake.artifacts, lake.platform_key)
        self.drift = ScheduledDriftCheck(
            self, "DriftCheck", config=config, artifacts=artifacts, key=lake.platform_key
        )
        queues = discover(watch).job_queues
        self.batch_watch = (
            BatchQueueWatch(
                self,
                "BatchQueueWatch",
                config=config,
                key=lake.platform_key,
                job_queue_arns=[
                    q.construct.job_queue_arn  # type: ignore[attr-defined]
                    for q in queues
                ],
            )
            if queues
            else None
        )
        # Discovered after this stack's own functions exist: their dead letters are watched too.
        self.watched: Discovered = discover([*watch, self])
        self._alarm_dead_letters()
        self._alarm_state_machines()
        self._alarm_job_queues()
        self._alarm_quarantine()
        self._alarm_endpoints()
        self._alarm_drift()
        self.dashboard = StageDashboard(
            self, "Dashboard", prefix=config.prefix, environment=config.name, found=self.watched
        )

    def _alarm(
        self,
        construct_id: str,
        metric: cw.IMetric,
        *,
        threshold: float,
        description: str,
        comparison: cw.ComparisonOperator = _GTE,
        missing: cw.TreatMissingData = cw.TreatMissingData.NOT_BREACHING,
    ) -> cw.Alarm:
        alarm = cw.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            comparison_operator=comparison,
            evaluation_periods=1,
            treat_missing_data=missing,
            alarm_description=description,
        )
        action = cw_actions.SnsAction(self.topic.topic)
        alarm.add_alarm_action(action)
        alarm.add_ok_action(action)
        self.alarms.append(alarm)
        return alarm

    @staticmethod
    def _id(label: str) -> str:
        """Return a construct ID part of a label (the path, unique in the app)."""
        return "-" + label.replace("/", "-")

    def _alarm_dead_letters(self) -> None:
        for w in self.watched.dead_letter_queues:
            queue = w.construct
            assert isinstance(queue, sqs.Queue)
            self._alarm(
                f"DeadLetters{self._id(w.label)}",
                queue.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", period=Duration.minutes(5)
                ),
                threshold=1,
                description=f"{self.config.prefix}: a message reached the dead-letter queue "
                f"{w.label} (stage {', '.join(w.stages) or '-'}).",
            )

    def _alarm_state_machines(self) -> None:
        for w in self.watched.state_machines:
            machine = w.construct
            assert isinstance(machine, sfn.StateMachine)
            for what, metric in (
                ("Failed", machine.metric_failed(period=Duration.minutes(5))),
                ("TimedOut", machine.metric_timed_out(period=Duration.minutes(5))),
            ):
                self._alarm(
                    f"{what}{self._id(w.label)}",
                    metric,
                    threshold=1,
                    description=f"{self.config.prefix}: an execution of {w.label} "
                    f"{'failed' if what == 'Failed' else 'timed out'}.",
                )

    def _alarm_job_queues(self) -> None:
        minutes = self.config.ops.batch_runnable_alarm_minutes
        for w in self.watched.job_queues:
            self._alarm(
                f"Runnable{self._id(w.label)}",
                batch_age_metric(self.config.name, w.construct),  # type: ignore[arg-type]
                threshold=minutes * 60,
                comparison=_GT,
                description=f"{self.config.prefix}: a Batch job of {w.label} has waited "
                f"RUNNABLE longer than {minutes} minutes (capacity, quota or Spot).",
            )

    def _alarm_quarantine(self) -> None:
        percent = self.config.ops.quarantine_alarm_percent
        hour = Duration.hours(1)
        for stage in m.STAGES:
            rate = cw.MathExpression(
                expression="100 * q / n",
                label=f"{stage} quarantined %",
                period=hour,
                using_metrics={
                    "q": stage_metric(self.config.name, stage, m.QUARANTINED, period=hour),
                    "n": stage_metric(self.config.name, stage, m.ITEMS_IN, period=hour),
                },
            )
            self._alarm(
                f"Quarantine{stage.capitalize()}",
                rate,
                threshold=percent,
                comparison=_GT,
                description=f"{self.config.prefix}: stage {stage} quarantined more than "
                f"{percent}% of its items in an hour.",
            )

    def _alarm_endpoints(self) -> None:
        latency_ms = self.config.ops.endpoint_p95_latency_ms
        for index, endpoint in enumerate(self.watched.endpoints):
            for variant in endpoint.variants:
                name = f"Endpoint{index}{self._id(variant)}"
                self._alarm(
                    f"{name}Errors",
                    endpoint_metric(endpoint, variant, "Invocation5XXErrors", "Sum"),
                    threshold=1,
                    description=f"{self.config.prefix}: endpoint variant {variant} returned "
                    "5XX errors.",
                )
                self._alarm(
                    f"{name}Latency",
                    endpoint_metric(endpoint, variant, "ModelLatency", "p95"),
                    threshold=latency_ms * 1000,  # ModelLatency is in µs
                    comparison=_GT,
                    description=f"{self.config.prefix}: endpoint variant {variant} p95 model "
                    f"latency above {latency_ms} ms.",
                )

    def _alarm_drift(self) -> None:
        # The metrics arrive once per check: IGNORE keeps the state between two checks.
        for name, what in (
            ("CriticalDriftedResources", "has critical CloudFormation drift"),
            ("DriftDetectionErrors", "could not detect drift of a stack"),
        ):
            self._alarm(
                name,
                drift_metric(self.config.name, name),
                threshold=1,
                missing=cw.TreatMissingData.IGNORE,
                description=f"{self.config.prefix}: the scheduled check {what}; see the report "
                "under ops/drift/ of the artifacts bucket.",
            )
