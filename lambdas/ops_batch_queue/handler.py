"""Lambda adapter of the Batch queue watch: oldest RUNNABLE job age per job queue.

Event: the EventBridge schedule's event (ignored). For every queue of
``BATCH_JOB_QUEUES`` (see :class:`oncopipe.ops.batch_queue.QueueWatchSettings`) it
publishes, in the ``Oncopipe`` namespace with the dimensions ``Environment`` and
``JobQueue``, ``BatchOldestRunnableSeconds`` (the alarm's metric) and
``BatchRunnableJobs``. The log and the result hold queue names and counts only.
"""

from __future__ import annotations

import time
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from oncopipe.ops.batch_queue import (
    RUNNABLE_AGE,
    RUNNABLE_JOBS,
    QueueWatchSettings,
    queue_ages,
)

NAMESPACE = "Oncopipe"

logger = Logger(service="ops-batch-queue")
SETTINGS = QueueWatchSettings.from_env()  # fails at cold start when misconfigured


@cache
def _client() -> Any:
    """Return the Batch client, made once per execution environment."""
    import boto3

    return boto3.client("batch")


def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Publish the RUNNABLE age and count of every watched queue; return them by queue.

    Raises:
        botocore.exceptions.ClientError: Batch refused a call (no metric is published for
            that run, so the alarm's missing data shows the watch itself failing).
    """
    ages = queue_ages(_client(), SETTINGS.queues, now_ms=int(time.time() * 1000))
    for age in ages:
        # One EMF document per queue; service="" keeps POWERTOOLS_SERVICE_NAME out of the
        # dimensions the alarms select on.
        metrics = EphemeralMetrics(namespace=NAMESPACE, service="")
        metrics.add_dimension(name="Environment", value=SETTINGS.environment)
        metrics.add_dimension(name="JobQueue", value=age.queue)
        metrics.add_metric(name=RUNNABLE_AGE, unit=MetricUnit.Seconds, value=age.oldest_seconds)
        metrics.add_metric(
            name=RUNNABLE_JOBS, unit=MetricUnit.Count, value=float(age.runnable_jobs)
        )
        metrics.flush_metrics()
    summary = {a.queue: {"runnable": a.runnable_jobs, "oldest_s": a.oldest_seconds} for a in ages}
    logger.info("batch queues watched", extra={"queues": summary})
    return summary
