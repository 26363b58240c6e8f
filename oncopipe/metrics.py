"""Stage metrics in CloudWatch Embedded Metric Format (EMF), one vocabulary for every stage.

Every adapter (Lambda, Batch job, SageMaker job) records what it did with a
:class:`StageMetrics` and flushes it once at the end; CloudWatch Logs turns the EMF line
into metrics in the ``Oncopipe`` namespace, whatever log group it lands in. The dashboard
and the alarms (``stacks/ops_stack.py``) read exactly these names and dimensions.

Dimensions are only ``Environment`` and ``Stage`` (:data:`STAGES`): never a key, a sample or
patient identifier, or anything else that could be PHI or make the metric count unbounded.

The EMF document is written to **stderr** by default: the Batch and processing jobs keep
stdout for their machine-readable outcome lines, and the Lambda runtime sends both streams
to CloudWatch Logs. The serialisation is Powertools Metrics' own.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO, Any

from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

NAMESPACE = "Oncopipe"
#: Environment variable naming the deployment environment (the ``Environment`` dimension).
ENV_ENVIRONMENT = "ONCOPIPE_ENV"
#: The environment dimension when none is set (the local mode).
LOCAL_ENVIRONMENT = "local"
#: The attempt number AWS Batch gives a job (1 for the first).
ENV_BATCH_ATTEMPT = "AWS_BATCH_JOB_ATTEMPT"

#: The stages, in pipeline order: one dashboard row each.
STAGES = (
    "ingest", "deid", "align", "call", "volumes", "radiomics", "notes", "cohort", "training",
    "endpoint", "drift",
)  # fmt: skip

#: Metric names (the dashboard and alarms use these constants, never literals).
ITEMS_IN = "ItemsIn"
SUCCEEDED = "ItemsSucceeded"
QUARANTINED = "ItemsQuarantined"
RETRIED = "ItemsRetried"
FAILED = "ItemsFailed"
SKIPPED = "ItemsSkipped"
DURATION = "ItemDuration"
BYTES = "BytesProcessed"
COST = "CostEstimateUSD"
TIME_TO_INSIGHT = "TimeToInsight"

#: An item's outcome -> its metric.
OUTCOMES = {
    "succeeded": SUCCEEDED,
    "quarantined": QUARANTINED,
    "retried": RETRIED,
    "failed": FAILED,
    "skipped": SKIPPED,
}


class StageMetrics:
    """What one invocation of a stage did: items by outcome, durations, bytes, cost.

    Use as a context manager (flushes on exit, also after an exception) or call
    :meth:`flush`. Durations are recorded per item, so the dashboard's p50/p95 are of items.
    """

    def __init__(
        self,
        stage: str,
        *,
        environment: str | None = None,
        stream: IO[str] | None = None,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")
        self.stage = stage
        self.environment = environment or os.environ.get(ENV_ENVIRONMENT) or LOCAL_ENVIRONMENT
        self._stream = stream
        # Ephemeral: Powertools' Metrics share one metric set per process, so a second
        # instance would repeat the first's values. service="": no ``service`` dimension.
        self._metrics = EphemeralMetrics(namespace=NAMESPACE, service="")
        self._count = 0

    def _add(self, name: str, unit: MetricUnit, value: float) -> None:
        self._metrics.add_metric(name=name, unit=unit, value=value)
        self._count += 1

    def items_in(self, count: int = 1) -> None:
        """Record ``count`` items received."""
        self._add(ITEMS_IN, MetricUnit.Count, count)

    def outcome(
        self,
        outcome: str,
        *,
        seconds: float | None = None,
        nbytes: int | None = None,
        count: int = 1,
    ) -> None:
        """Record ``count`` items that ended ``outcome`` (a key of :data:`OUTCOMES`).

        Raises:
            ValueError: an unknown outcome.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r} (one of {', '.join(OUTCOMES)})")
        self._add(OUTCOMES[outcome], MetricUnit.Count, count)
        if seconds is not None:
            self._add(DURATION, MetricUnit.Seconds, max(seconds, 0.0))
        if nbytes is not None:
            self._add(BYTES, MetricUnit.Bytes, max(nbytes, 0))

    @contextmanager
    def timed(self, *, nbytes: int | None = None) -> Iterator[dict[str, Any]]:
        """Time one item; the body sets ``result["outcome"]`` (default succeeded).

        An exception records the item as failed and propagates.
        """
        result: dict[str, Any] = {"outcome": "succeeded", "nbytes": nbytes}
        started = time.perf_counter()
        try:
            yield result
        except BaseException:
            self.outcome("failed", seconds=time.perf_counter() - started)
            raise
        self.outcome(result["outcome"], seconds=time.perf_counter() - started,
                     nbytes=result.get("nbytes"))  # fmt: skip

    def cost(self, usd: float) -> None:
        """Record a job's estimated cost in US dollars."""
        self._add(COST, MetricUnit.NoUnit, max(usd, 0.0))

    def job_cost(self, fields: Mapping[str, Any]) -> None:
        """Record a job's estimate from its cost fields (:func:`oncopipe.ops.cost.job_cost_fields`);
        nothing when there is no estimate (unknown instance, local mode)."""
        usd = fields.get("cost_usd_estimate")
        if usd is not None:
            self.cost(float(usd))

    def attempt(self, environ: Mapping[str, str] | None = None) -> None:
        """Record the job as a retry (:data:`RETRIED`) when it is not its first attempt.

        AWS Batch numbers attempts from 1 in :data:`ENV_BATCH_ATTEMPT` (a spot reclaim or
        a failure retried by the job definition's retry strategy).
        """
        environ = os.environ if environ is None else environ
        raw = str(environ.get(ENV_BATCH_ATTEMPT, "")).strip()
        if raw.isdigit() and int(raw) > 1:
            self._add(RETRIED, MetricUnit.Count, 1)

    def value(self, name: str, value: float, unit: MetricUnit = MetricUnit.Count) -> None:
        """Record another metric of this stage (e.g. :data:`TIME_TO_INSIGHT`)."""
        self._add(name, unit, value)

    def document(self) -> dict[str, Any] | None:
        """Return the EMF document of what was recorded (None when nothing was)."""
        if not self._count:
            return None
        self._metrics.add_dimension(name="Environment", value=self.environment)
        self._metrics.add_dimension(name="Stage", value=self.stage)
        document: dict[str, Any] = dict(self._metrics.serialize_metric_set())
        return document

    def flush(self) -> dict[str, Any] | None:
        """Write the EMF document as one line (stderr unless a stream was given); reset.

        Returns the document written, or None when nothing was recorded.
        """
        document = self.document()
        self._metrics.clear_metrics()
        self._count = 0
        if document is not None:
            stream = self._stream or sys.stderr
            stream.write(json.dumps(document, separators=(",", ":")) + "\n")
            stream.flush()
        return document

    def __enter__(self) -> StageMetrics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()
