"""The series settle in the local mode: each DICOM series converts once it settled.

As in AWS (:mod:`oncopipe.settle`): every de-identified instance is counted in a settle
table (DynamoDB on the embedded endpoint) and restarts its series' timer (an SQS delay
queue there); a series whose timer fires with no later instance is converted by the
same job commands the per-series state machine runs: ``python -m batch_jobs.imaging
volumes --series ...`` as the imaging job's role, then ``python -m processing.radiomics
stage --series ...`` as the processing role. The daily jobs that ``local run`` still
runs afterwards are the sweepers: they find nothing left to do.

The tracker itself runs as the local worker (the deployed de-id function and settle
function have their own grants on it, checked in the synthesized stacks). Nothing here
prints or stores more than pseudonymous keys, de-identified UIDs, run ids and counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import boto3

from oncopipe.flow import INGEST
from oncopipe.local.state import LocalState
from oncopipe.local.worker import Execution, JobResult, _json_lines, _run_job_command
from oncopipe.settle import (
    SeriesKey,
    SettleConversionError,
    SettledSeries,
    SettleOutcome,
    SettleTable,
    SettleTimer,
    TimerMessage,
    after_deid,
    handle_records,
    settle,
    validate_settle_seconds,
)

#: The local mode's default settle time: short, so that the demo converts in seconds
#: (deployed: ``series_settle_seconds`` of the configuration, 300 s).
LOCAL_SETTLE_SECONDS = 3
TABLE_NAME = "oncopipe-local-series-settle"
QUEUE_NAME = "oncopipe-local-series-settle"


def ensure_tracker(dynamodb: Any, sqs: Any) -> tuple[str, str]:
    """Create the local settle table and timer queue when missing.

    Returns:
        The table name and the queue URL.
    """
    try:
        dynamodb.create_table(
            TableName=TABLE_NAME,
            KeySchema=[
                {"AttributeName": "patient_key", "KeyType": "HASH"},
                {"AttributeName": "series", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "patient_key", "AttributeType": "S"},
                {"AttributeName": "series", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    except dynamodb.exceptions.ResourceInUseException:
        pass
    queue_url = sqs.create_queue(QueueName=QUEUE_NAME)["QueueUrl"]
    return TABLE_NAME, str(queue_url)


@dataclass
class JobConversion:
    """Convert a settled series with the job commands, as the job roles.

    ``jobs`` collects each job's :class:`JobResult` (the run report lists them).

    Raises (from ``__call__``):
        SettleConversionError: the volume job failed (the timer is retried).
    """

    state: LocalState
    workers: int = 1
    jobs: list[JobResult] = field(default_factory=list)

    def __call__(self, settled: SettledSeries) -> Mapping[str, Any]:
        run_id = settled.run_id
        done = _run_job_command(
            self.state, "imaging", "batch_jobs.imaging",
            ["volumes", "--run-id", run_id, "--series", *settled.targets], "batch-jobs.log",
        )  # fmt: skip
        lines = _json_lines(done.stdout)
        self.jobs.append(JobResult("volumes", settled.key.label, done.returncode,
                                   {"series": lines}))  # fmt: skip
        if done.returncode != 0:
            raise SettleConversionError(f"series {settled.key.label}: the volume job failed")
        summary: dict[str, Any] = {"volumes": _statuses(lines)}
        # rebuilt volumes only: a skipped one (same inputs) has its features already
        converted = [
            str(line["series"]) for line in lines
            if line.get("status") == "converted" and line.get("item_status") != "skipped"
        ]  # fmt: skip
        if converted:
            done = _run_job_command(
                self.state, "radiomics", "processing.radiomics",
                ["stage", "--run-id", run_id, "--workers", str(self.workers),
                 "--series", *converted], "processing-jobs.log",
            )  # fmt: skip
            lines = _json_lines(done.stdout)
            self.jobs.append(JobResult("radiomics", settled.key.label, done.returncode,
                                       {"series": lines}))  # fmt: skip
            summary["radiomics"] = _statuses(lines)
        return summary


def _statuses(lines: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        status = str(line.get("status", line.get("item_status", "")))
        counts[status] = counts.get(status, 0) + 1
    return counts


class LocalSeriesSettle:
    """The settle table, timer queue and settle consumer of one local run.

    :meth:`observe` is the de-id hook (each ingest execution); :meth:`drain` consumes the
    timers until every series seen is converted at its latest generation.
    """

    def __init__(
        self,
        state: LocalState,
        settle_seconds: int = LOCAL_SETTLE_SECONDS,
        *,
        convert: Callable[[SettledSeries], Mapping[str, Any]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settle_seconds = validate_settle_seconds(settle_seconds, where="settle_seconds")
        kwargs = state.client_kwargs()
        dynamodb = boto3.client("dynamodb", **kwargs)
        self.sqs = boto3.client("sqs", **kwargs)
        table_name, self.queue_url = ensure_tracker(dynamodb, self.sqs)
        self.table = SettleTable(dynamodb, table_name)
        self.timer = SettleTimer(self.sqs, self.queue_url)
        self.conversion = JobConversion(state) if convert is None else None
        converter = convert if convert is not None else self.conversion
        if converter is None:  # pragma: no cover - one of the two is always set
            raise ValueError("no conversion")
        self.convert: Callable[[SettledSeries], Mapping[str, Any]] = converter
        self.clock = clock
        self.seen: set[SeriesKey] = set()
        self.outcomes: list[SettleOutcome] = []

    @property
    def jobs(self) -> list[JobResult]:
        """The job commands the conversions ran (none with a custom ``convert``)."""
        return list(self.conversion.jobs) if self.conversion else []

    def observe(self, execution: Execution, run_id: str) -> int | None:
        """Count a de-identified instance and (re)start its series' timer.

        Returns:
            The series' generation, or None for an execution that is not a de-id.
        """
        if execution.outcome != INGEST.branch(INGEST.deidentify.name).success:
            return None
        result = execution.route
        item_status = "skipped" if result.get("skipped") else "done"
        generation = after_deid(self.table, self.timer, item_status, result, self.clock(),
                                run_id=run_id, settle_seconds=self.settle_seconds)  # fmt: skip
        if generation is not None:
            self.seen.add(SeriesKey(str(result["patient_key"]), str(result["series"])))
        return generation

    def pending(self) -> list[SeriesKey]:
        """Return the series seen that are not converted at their latest generation."""
        waiting = []
        for key in sorted(self.seen, key=lambda k: k.label):
            state = self.table.get(key)
            if state is not None and state.converted_generation < state.generation:
                waiting.append(key)
        return waiting

    def _one(self, message: TimerMessage) -> SettleOutcome:
        outcome = settle(message, table=self.table, timer=self.timer, convert=self.convert,
                         now=self.clock())  # fmt: skip
        self.outcomes.append(outcome)
        return outcome

    def drain(self, *, patience: float | None = None) -> list[SettleOutcome]:
        """Consume timers until no series seen is pending; return this drain's outcomes.

        Gives up when no timer arrived for ``patience`` seconds (default: the settle time
        plus 30 s); what is left is the daily sweep's. A failed conversion's timer comes
        back after the queue's visibility timeout (``VisibilityTimeout`` 2 s here).
        """
        wait = self.settle_seconds + 30.0 if patience is None else patience
        start = len(self.outcomes)
        last = time.monotonic()
        while self.pending() and time.monotonic() - last < wait:
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                VisibilityTimeout=2,
            )  # fmt: skip
            messages = response.get("Messages", [])
            if not messages:
                continue
            records = [{"messageId": m["MessageId"], "body": m["Body"]} for m in messages]
            _, failures = handle_records(records, self._one)
            retried = {f["itemIdentifier"] for f in failures}
            for message in messages:
                if message["MessageId"] not in retried:
                    self.sqs.delete_message(
                        QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                    )
            last = time.monotonic()
        return self.outcomes[start:]

    def converted(self) -> list[SettleOutcome]:
        """Return the outcomes that converted a series (in order)."""
        return [o for o in self.outcomes if o.status == "converted"]
