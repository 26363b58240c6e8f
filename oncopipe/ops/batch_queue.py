"""Age of the oldest RUNNABLE job of each AWS Batch job queue (Batch publishes no such metric).

A job that stays RUNNABLE is waiting for capacity (Spot interruptions, a vCPU quota, an
instance type the region lacks): the pipeline stalls without failing. :func:`queue_ages`
lists the RUNNABLE jobs of each queue (``ListJobs``, every page) and returns, per queue, how
many there are and how long the oldest has waited since it was submitted (``createdAt``:
Batch keeps no "became RUNNABLE" time; a job is RUNNABLE shortly after submission unless a
dependency holds it). The scheduled function publishes both as metrics with the dimensions
``Environment`` and ``JobQueue`` (the queue's name: infrastructure, never a job's name,
which may carry a sample identifier). Nothing here logs job names or parameters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from oncopipe.errors import ConfigError

#: Environment variables of the function.
ENV_QUEUES = "BATCH_JOB_QUEUES"
ENV_ENVIRONMENT = "ONCOPIPE_ENV"

#: Metric names (namespace ``Oncopipe``); the ops stack's alarms and dashboard use these.
RUNNABLE_AGE = "BatchOldestRunnableSeconds"
RUNNABLE_JOBS = "BatchRunnableJobs"


class BatchClient(Protocol):
    """The boto3 Batch client method :func:`queue_ages` calls."""

    def list_jobs(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class QueueAge:
    """The RUNNABLE jobs of one job queue at one moment."""

    queue: str
    runnable_jobs: int
    #: Seconds the oldest RUNNABLE job has waited since submission (0 when none).
    oldest_seconds: float


def queue_name(queue: str) -> str:
    """Return the name of a job queue given by name or ARN (``...:job-queue/<name>``)."""
    return queue.rsplit("/", 1)[-1] if queue.startswith("arn:") else queue


def queue_age(client: BatchClient, queue: str, *, now_ms: int) -> QueueAge:
    """Return the RUNNABLE jobs of ``queue`` (name or ARN) at ``now_ms`` (epoch ms).

    Raises:
        botocore.exceptions.ClientError: Batch refused the call (after boto3's retries).
    """
    count = 0
    oldest_ms: int | None = None
    kwargs: dict[str, Any] = {"jobQueue": queue, "jobStatus": "RUNNABLE", "maxResults": 100}
    while True:
        page = client.list_jobs(**kwargs)
        for job in page.get("jobSummaryList", []):
            count += 1
            created = job.get("createdAt")
            if isinstance(created, int) and (oldest_ms is None or created < oldest_ms):
                oldest_ms = created
        token = page.get("nextToken")
        if not token:
            break
        kwargs["nextToken"] = token
    oldest = max(now_ms - oldest_ms, 0) / 1000 if oldest_ms is not None else 0.0
    return QueueAge(queue=queue_name(queue), runnable_jobs=count, oldest_seconds=oldest)


def queue_ages(client: BatchClient, queues: Sequence[str], *, now_ms: int) -> list[QueueAge]:
    """Return :func:`queue_age` of every queue, in the order given.

    Raises:
        botocore.exceptions.ClientError: Batch refused a call.
    """
    return [queue_age(client, q, now_ms=now_ms) for q in queues]


@dataclass(frozen=True)
class QueueWatchSettings:
    """The function's environment: the deployment environment and the queues to watch."""

    environment: str
    queues: tuple[str, ...]

    def as_env(self) -> dict[str, str]:
        """Return the environment variables :meth:`from_env` reads."""
        return {ENV_ENVIRONMENT: self.environment, ENV_QUEUES: ",".join(self.queues)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> QueueWatchSettings:
        """Return the settings from ``environ`` (default ``os.environ``).

        Raises:
            ConfigError: a variable is missing or names no queue.
        """
        env = os.environ if environ is None else environ
        environment = env.get(ENV_ENVIRONMENT, "")
        queues = tuple(q.strip() for q in env.get(ENV_QUEUES, "").split(",") if q.strip())
        if not environment or not queues:
            raise ConfigError(f"{ENV_ENVIRONMENT} and {ENV_QUEUES} must be set")
        return cls(environment=environment, queues=queues)
