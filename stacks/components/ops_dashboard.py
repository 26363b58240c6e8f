"""StageDashboard: one CloudWatch dashboard per environment, a row per pipeline stage.

Each stage of :data:`oncopipe.metrics.STAGES` gets a header and four graphs from its stage
metrics (namespace ``Oncopipe``, dimensions Environment and Stage): items by outcome;
quarantine and failure rates; item duration p50/p95 with bytes processed; estimated cost
and cost per succeeded item. Then, where the stage has them, its infrastructure metrics:
dead-letter queue depth, state machine failures, Batch RUNNABLE age, endpoint latency and
5XX errors, drift counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration, aws_batch as batch, aws_cloudwatch as cw, aws_stepfunctions as sfn
from constructs import Construct

from oncopipe import metrics as m
from oncopipe.ops.batch_queue import RUNNABLE_AGE
from stacks.components.ops_watch import Discovered, Endpoint, Watched, unassigned

PERIOD = Duration.minutes(5)
HOUR = Duration.hours(1)
#: Drift metric names of the ``ops_drift`` function (dimension Environment only).
DRIFT_METRICS = ("DriftedResources", "CriticalDriftedResources", "DriftDetectionErrors")


def stage_metric(
    environment: str,
    stage: str,
    name: str,
    statistic: str = "Sum",
    period: Duration = PERIOD,
    label: str | None = None,
) -> cw.Metric:
    """Return a stage metric of :mod:`oncopipe.metrics` (dimensions Environment, Stage)."""
    return cw.Metric(
        namespace=m.NAMESPACE,
        metric_name=name,
        dimensions_map={"Environment": environment, "Stage": stage},
        statistic=statistic,
        period=period,
        label=label,
    )


def batch_age_metric(environment: str, queue: batch.JobQueue) -> cw.Metric:
    """Return the oldest RUNNABLE job's age (seconds) of ``queue``, maximum per 5 minutes."""
    return cw.Metric(
        namespace=m.NAMESPACE,
        metric_name=RUNNABLE_AGE,
        dimensions_map={"Environment": environment, "JobQueue": queue.job_queue_name},
        statistic="Maximum",
        period=PERIOD,
    )


def endpoint_metric(endpoint: Endpoint, variant: str, name: str, statistic: str) -> cw.Metric:
    """Return an ``AWS/SageMaker`` metric of one endpoint variant."""
    return cw.Metric(
        namespace="AWS/SageMaker",
        metric_name=name,
        dimensions_map={
            "EndpointName": endpoint.endpoint.attr_endpoint_name,
            "VariantName": variant,
        },
        statistic=statistic,
        period=PERIOD,
    )


def drift_metric(environment: str, name: str, period: Duration = HOUR) -> cw.Metric:
    """Return a metric of the scheduled drift check (dimension Environment)."""
    return cw.Metric(
        namespace=m.NAMESPACE,
        metric_name=name,
        dimensions_map={"Environment": environment},
        statistic="Maximum",
        period=period,
    )


def _infra_widgets(environment: str, watched: dict[str, list[Watched]]) -> list[cw.IWidget]:
    widgets: list[cw.IWidget] = []
    if watched["dlq"]:
        widgets.append(
            cw.GraphWidget(
                title="Dead-letter messages",
                left=[
                    w.construct.metric_approximate_number_of_messages_visible(  # type: ignore[attr-defined]
                        statistic="Maximum", period=PERIOD, label=w.label
                    )
                    for w in watched["dlq"]
                ],
            )
        )
    if watched["sfn"]:
        left: list[cw.IMetric] = []
        for w in watched["sfn"]:
            machine = w.construct
            assert isinstance(machine, sfn.StateMachine)
            left.append(machine.metric_failed(period=PERIOD, label=f"{w.label} failed"))
            left.append(machine.metric_timed_out(period=PERIOD, label=f"{w.label} timed out"))
        widgets.append(cw.GraphWidget(title="State machine failures", left=left))
    if watched["batch"]:
        widgets.append(
            cw.GraphWidget(
                title="Batch oldest RUNNABLE job (s)",
                left=[
                    batch_age_metric(environment, w.construct)  # type: ignore[arg-type]
                    for w in watched["batch"]
                ],
            )
        )
    return widgets


class StageDashboard(Construct):
    """The environment's dashboard ``<prefix>-pipeline`` (see the module)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        prefix: str,
        environment: str,
        found: Discovered,
    ) -> None:
        super().__init__(scope, construct_id)
        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{prefix}-pipeline",
            default_interval=Duration.days(1),
        )
        for stage in m.STAGES:
            self.dashboard.add_widgets(
                cw.TextWidget(markdown=f"## Stage `{stage}`", width=24, height=1)
            )
            self.dashboard.add_widgets(*self._stage_widgets(environment, stage))
            infra = _infra_widgets(environment, found.for_stage(stage))
            if stage == "endpoint":
                infra += self._endpoint_widgets(found.endpoints)
            if stage == "drift":
                infra.append(
                    cw.GraphWidget(
                        title="Drift (last check)",
                        width=8,
                        left=[drift_metric(environment, name) for name in DRIFT_METRICS],
                    )
                )
            if infra:
                self.dashboard.add_widgets(*infra)
        rest = unassigned(found)
        if rest:
            self.dashboard.add_widgets(
                cw.TextWidget(markdown="## Other infrastructure", width=24, height=1)
            )
            self.dashboard.add_widgets(
                *_infra_widgets(
                    environment,
                    {
                        "dlq": [w for w in rest if w in found.dead_letter_queues],
                        "sfn": [w for w in rest if w in found.state_machines],
                        "batch": [w for w in rest if w in found.job_queues],
                    },
                )
            )

    @staticmethod
    def _stage_widgets(environment: str, stage: str) -> list[cw.IWidget]:
        def metric(name: str, statistic: str = "Sum", label: str | None = None) -> cw.Metric:
            return stage_metric(environment, stage, name, statistic, label=label)

        items = cw.GraphWidget(
            title=f"{stage}: items",
            width=6,
            left=[
                metric(name)
                for name in (m.ITEMS_IN, m.SUCCEEDED, m.QUARANTINED, m.FAILED, m.RETRIED)
            ],
        )
        rates = cw.GraphWidget(
            title=f"{stage}: quarantine / failure rate (%)",
            width=6,
            left=[
                cw.MathExpression(
                    expression="100 * q / n",
                    label="quarantined %",
                    period=PERIOD,
                    using_metrics={"q": metric(m.QUARANTINED), "n": metric(m.ITEMS_IN)},
                ),
                cw.MathExpression(
                    expression="100 * f / n",
                    label="failed %",
                    period=PERIOD,
                    using_metrics={"f": metric(m.FAILED), "n": metric(m.ITEMS_IN)},
                ),
            ],
        )
        durations = cw.GraphWidget(
            title=f"{stage}: item duration (s) and bytes",
            width=6,
            left=[metric(m.DURATION, "p50", "p50"), metric(m.DURATION, "p95", "p95")],
            right=[metric(m.BYTES, "Sum", "bytes")],
        )
        cost = cw.GraphWidget(
            title=f"{stage}: cost (USD)",
            width=6,
            left=[
                metric(m.COST, "Sum", "estimated cost"),
                cw.MathExpression(
                    expression="c / s",
                    label="cost per sample",
                    period=PERIOD,
                    using_metrics={"c": metric(m.COST), "s": metric(m.SUCCEEDED)},
                ),
            ],
        )
        return [items, rates, durations, cost]

    @staticmethod
    def _endpoint_widgets(endpoints: Sequence[Endpoint]) -> list[cw.IWidget]:
        widgets: list[cw.IWidget] = []
        for endpoint in endpoints:
            for variant in endpoint.variants:
                widgets.append(
                    cw.GraphWidget(
                        title=f"Endpoint {variant}: latency (µs) and 5XX",
                        width=8,
                        left=[
                            endpoint_metric(endpoint, variant, "ModelLatency", "p50"),
                            endpoint_metric(endpoint, variant, "ModelLatency", "p95"),
                        ],
                        right=[endpoint_metric(endpoint, variant, "Invocation5XXErrors", "Sum")],
                    )
                )
        return widgets
