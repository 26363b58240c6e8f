"""The ingest flow, described once: its states, branches, outcomes and retry policies.

Two things run this flow and both read it from here: the ingest state machine
(:class:`stacks.ingest_stack.IngestStack` builds its Choice, tasks, retries and terminal
states from :data:`INGEST`) and the local mode's worker (:class:`oncopipe.local.worker.IngestFlow`
walks the same branches with the same attempt counts and reports the terminal state's
name). ``tests/infrastructure/test_ingest_flow.py`` checks the synthesized state machine
against this description state by state, and the worker's outcomes against the states the
state machine would end in.

The flow for one uploaded object::

    Route --(error after retries)--> QuarantineAfterError -> RoutingFailed (Fail)
      |
    Outcome (Choice on the router's result)
      status quarantined              -> InputQuarantined (Fail)
      status accepted (a sheet)       -> StartGenomics -> SampleSheetProcessed | GenomicsNotStarted
      kind dicom, status received     -> Deidentify -> DeidOutcome -> Deidentified
                                                     | DicomQuarantined | DeidFailed
      kind note, status received      -> QueueNote -> NoteQueued
      otherwise (FASTQ)               -> Received (Succeed)

No module of the stacks is imported here: the workload code and the local mode read it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from oncopipe import layout

#: Python exception names of transient failures: retried before the catch-all quarantines.
TRANSIENT_ERRORS = (
    "ClientError",
    "EndpointConnectionError",
    "ReadTimeoutError",
    "ConnectionError",
)
#: Lambda's throttling error: reserved concurrency throttles bulk uploads, so a task waits
#: for a slot rather than letting the catch-all quarantine valid data.
THROTTLED_ERROR = "Lambda.TooManyRequestsException"


@dataclass(frozen=True)
class Retry:
    """One retrier of a task, as Step Functions runs it (``MaxAttempts`` retries after the
    first attempt, waits of ``interval * backoff_rate ** n`` capped at ``max_delay``)."""

    errors: tuple[str, ...]
    interval_seconds: int
    max_attempts: int
    backoff_rate: float = 2.0
    max_delay_seconds: int | None = None
    jitter: bool = False

    def matches(self, error_name: str) -> bool:
        """Return True when this retrier retries an error of that name."""
        return error_name in self.errors or "States.ALL" in self.errors

    def wait_seconds(self, retry: int) -> float:
        """Return the wait before retry ``retry`` (1-based), without jitter."""
        wait = self.interval_seconds * self.backoff_rate ** (retry - 1)
        return wait if self.max_delay_seconds is None else min(wait, self.max_delay_seconds)

    def asl(self) -> dict[str, Any]:
        """Return the retrier as the Amazon States Language writes it."""
        out: dict[str, Any] = {
            "ErrorEquals": list(self.errors),
            "IntervalSeconds": self.interval_seconds,
            "MaxAttempts": self.max_attempts,
            "BackoffRate": self.backoff_rate,
        }
        if self.max_delay_seconds is not None:
            out["MaxDelaySeconds"] = self.max_delay_seconds
        if self.jitter:
            out["JitterStrategy"] = "FULL"
        return out


THROTTLED = Retry((THROTTLED_ERROR,), 2, 12, max_delay_seconds=300, jitter=True)
TRANSIENT = Retry(TRANSIENT_ERRORS, 5, 3, jitter=True)
#: The quarantine task's transient retrier (waits without jitter: it runs once per failure).
TRANSIENT_STEADY = Retry(TRANSIENT_ERRORS, 5, 3)


def attempts(retries: tuple[Retry, ...], error_name: str) -> int:
    """Return how many times a task runs in all before an error of that name is final."""
    return 1 + next((r.max_attempts for r in retries if r.matches(error_name)), 0)


@dataclass(frozen=True)
class Task:
    """A task state: its name and its retriers, in order."""

    name: str
    retries: tuple[Retry, ...]


@dataclass(frozen=True)
class Branch:
    """One rule of the ``Outcome`` Choice and the states it leads to.

    ``status`` (and ``kind`` when given) are matched against the router's result; ``start``
    is the first state of the branch; ``success`` and ``failures`` are its terminal states.
    """

    start: str
    status: str
    kind: str | None
    success: str | None
    failures: tuple[str, ...] = ()

    def matches(self, result: Mapping[str, Any]) -> bool:
        """Return True when the router's result takes this branch."""
        if result.get("status") != self.status:
            return False
        return self.kind is None or result.get("kind") == self.kind


@dataclass(frozen=True)
class IngestFlowSpec:
    """The whole ingest flow (see the module's diagram)."""

    route: Task
    quarantine_after_error: Task
    routing_failed: str
    outcome_choice: str
    branches: tuple[Branch, ...]
    default: str
    deidentify: Task
    deid_outcome_choice: str
    start_genomics: Task

    def branch_for(self, result: Mapping[str, Any]) -> Branch | None:
        """Return the branch the ``Outcome`` Choice takes for a router result (None: default)."""
        return next((b for b in self.branches if b.matches(result)), None)

    def branch(self, start: str) -> Branch:
        """Return the branch that starts with state ``start``."""
        return next(b for b in self.branches if b.start == start)


#: The ingest flow as deployed (and as the local worker runs it).
INGEST = IngestFlowSpec(
    route=Task("Route", (THROTTLED, TRANSIENT)),
    quarantine_after_error=Task("QuarantineAfterError", (THROTTLED, TRANSIENT_STEADY)),
    routing_failed="RoutingFailed",
    outcome_choice="Outcome",
    branches=(
        Branch(
            "InputQuarantined", "quarantined", None, success=None, failures=("InputQuarantined",)
        ),
        Branch(
            "StartGenomics",
            "accepted",
            None,
            success="SampleSheetProcessed",
            failures=("GenomicsNotStarted",),
        ),
        Branch(
            "Deidentify",
            "received",
            layout.KIND_DICOM,
            success="Deidentified",
            failures=("DicomQuarantined", "DeidFailed"),
        ),
        Branch("QueueNote", "received", layout.KIND_NOTE, success="NoteQueued"),
    ),
    default="Received",
    deidentify=Task("Deidentify", (Retry((THROTTLED_ERROR,), 2, 12, max_delay_seconds=300),)),
    deid_outcome_choice="DeidOutcome",
    start_genomics=Task(
        "StartGenomics",
        (
            Retry(
                (
                    "StepFunctions.ExecutionLimitExceededException",
                    "StepFunctions.SdkClientException",
                ),
                5,
                6,
                jitter=True,
            ),
        ),
    ),
)
