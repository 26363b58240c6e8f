"""Series settle: convert a DICOM series once no new instance has arrived for a while.

A series is complete when no instance has arrived for the settle time (the "stable series"
of PACS such as Orthanc). Then its volume, masks and radiomics run for that series alone;
the daily imaging job stays as the sweeper for anything missed.

The tracker is a DynamoDB table keyed by ``patient_key`` (partition key: the pseudonymous
key) and ``series`` (sort key: the de-identified SeriesInstanceUID); neither is ever a
source identifier (:class:`SeriesKey` refuses anything else). Its attributes:

- ``generation``: incremented atomically (UpdateItem ``ADD``) on every new instance;
- ``instances``, ``last_arrival`` (epoch seconds), ``run_id`` (the run of the latest
  instance), ``modality``;
- ``converted_generation``: the generation the last successful conversion saw;
- ``claimed_generation`` / ``lease_until``: a conversion in progress (a lease, so a crashed
  one does not hold the series forever);
- ``expires_at``: DynamoDB's TTL removes the item :data:`RETAIN_SECONDS` after its last
  instance.

The timer is an SQS message ``{patient_key, series, generation, due}`` sent after each
instance (:func:`instance_arrived`). SQS delays a message by at most 900 s; a longer
settle time is handled by re-enqueueing: the message carries its ``due`` time and a message
that arrives early is sent again with the remaining delay (at most 900 s each hop), so any
settle time from 0 s to :data:`MAX_SETTLE_SECONDS` works. On each message
(:func:`settle`):

- the series' ``generation`` is above the message's: a later instance restarted the timer;
  dropped (the later message fires);
- ``converted_generation`` has reached it: a duplicate delivery (SQS is at-least-once);
  dropped;
- otherwise the series is claimed (conditional UpdateItem) and converted; a late instance
  after conversion bumps the generation, so its own timer reconverts the series (the
  manifest protocol redoes the item because its inputs changed).

What a conversion does is a callable (:data:`Conversion`): in process
(:class:`InProcessConversion`: the volume and radiomics cores, for the local mode) or a
Step Functions execution for the series (:class:`StateMachineConversion`, in AWS). Nothing
here logs or stores more than pseudonymous keys, de-identified UIDs, run ids and counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from oncopipe import layout
from oncopipe.errors import ConfigError, OncopipeError
from oncopipe.imaging.uids import is_valid_uid
from oncopipe.pseudonym import is_patient_key
from oncopipe.runs import validate_run_id

logger = logging.getLogger(__name__)

#: The longest delay SQS gives one message (seconds).
MAX_SQS_DELAY = 900
#: The longest settle time accepted: the daily sweep picks up anything later anyway.
MAX_SETTLE_SECONDS = 86_400
DEFAULT_SETTLE_SECONDS = 300
#: How long a claimed conversion holds its series before another may take it over.
DEFAULT_LEASE_SECONDS = 900
#: The item attribute DynamoDB's TTL deletes by (epoch seconds), and how long after its
#: last instance a series is kept: a later instance after that is tracked afresh.
TTL_ATTRIBUTE = "expires_at"
RETAIN_SECONDS = 30 * 86_400
#: Modalities whose objects are structures on another series (masks, not volumes).
STRUCTURE_MODALITIES = frozenset({"RTSTRUCT", "SEG"})

TABLE_ENV = "SETTLE_TABLE"
QUEUE_ENV = "SETTLE_QUEUE_URL"
SECONDS_ENV = "SERIES_SETTLE_SECONDS"
STATE_MACHINE_ENV = "SETTLE_STATE_MACHINE_ARN"


class SettleError(OncopipeError):
    """A series-settle input or message is unusable; the message says which field."""


class SeriesBusyError(OncopipeError):
    """Another conversion of the series holds its lease; the message is to be retried."""


def validate_settle_seconds(value: object, *, where: str = SECONDS_ENV) -> int:
    """Return the settle time in seconds.

    Raises:
        ConfigError: not an integer in ``0..MAX_SETTLE_SECONDS`` (longer than the SQS
            maximum of 900 s is fine: the timer re-enqueues).
    """
    try:
        seconds = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        seconds = None
    if seconds is None or not 0 <= seconds <= MAX_SETTLE_SECONDS:
        raise ConfigError(
            f"{where}: expected an integer number of seconds in 0..{MAX_SETTLE_SECONDS}, "
            f"got {value!r}"
        )
    return seconds


@dataclass(frozen=True)
class SeriesKey:
    """One tracked series: pseudonymous patient key + de-identified SeriesInstanceUID.

    Raises:
        SettleError: the patient key is not one oncopipe made, or the series is not a UID
            (so a source patient id or an ingest key can never become a tracker key).
    """

    patient_key: str
    series: str

    def __post_init__(self) -> None:
        if not is_patient_key(self.patient_key):
            raise SettleError("series key: patient_key is not a pseudonymous patient key")
        if not is_valid_uid(self.series):
            raise SettleError("series key: series is not a DICOM UID")

    @property
    def label(self) -> str:
        """``<patient_key>/<series>``: how logs and results name the series (no PHI)."""
        return f"{self.patient_key}/{self.series}"


@dataclass(frozen=True)
class SeriesState:
    """A tracker item, as read back."""

    key: SeriesKey
    generation: int
    instances: int
    last_arrival: float
    run_id: str
    modality: str
    converted_generation: int = 0
    claimed_generation: int = 0
    lease_until: float = 0.0


def _number(item: Mapping[str, Any], name: str) -> float:
    value = item.get(name)
    return float(value["N"]) if value else 0.0


def _string(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    return str(value["S"]) if value else ""


class SettleTable:
    """The tracker table behind a DynamoDB client (low-level API)."""

    def __init__(self, client: Any, table_name: str) -> None:
        self.client = client
        self.table_name = table_name

    @staticmethod
    def _key(key: SeriesKey) -> dict[str, Any]:
        return {"patient_key": {"S": key.patient_key}, "series": {"S": key.series}}

    def record(self, key: SeriesKey, now: float, *, run_id: str, modality: str) -> int:
        """Count one new instance of the series; return the series' new generation."""
        response = self.client.update_item(
            TableName=self.table_name,
            Key=self._key(key),
            UpdateExpression=(
                "ADD generation :one, instances :one "
                "SET last_arrival = :now, run_id = :run, modality = :modality, "
                f"{TTL_ATTRIBUTE} = :expires"
            ),
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":now": {"N": repr(float(now))},
                ":run": {"S": validate_run_id(run_id)},
                ":modality": {"S": modality},
                ":expires": {"N": str(int(now) + RETAIN_SECONDS)},
            },
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["generation"]["N"])

    def _state(self, item: Mapping[str, Any]) -> SeriesState:
        return SeriesState(
            key=SeriesKey(_string(item, "patient_key"), _string(item, "series")),
            generation=int(_number(item, "generation")),
            instances=int(_number(item, "instances")),
            last_arrival=_number(item, "last_arrival"),
            run_id=_string(item, "run_id"),
            modality=_string(item, "modality"),
            converted_generation=int(_number(item, "converted_generation")),
            claimed_generation=int(_number(item, "claimed_generation")),
            lease_until=_number(item, "lease_until"),
        )

    def get(self, key: SeriesKey) -> SeriesState | None:
        """Return the series' state (a consistent read), or None when it is not tracked."""
        response = self.client.get_item(
            TableName=self.table_name, Key=self._key(key), ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else self._state(item)

    def patient_series(self, patient_key: str) -> list[SeriesState]:
        """Return every tracked series of a patient (a consistent query), by series UID."""
        states: list[SeriesState] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "patient_key = :p",
            "ExpressionAttributeValues": {":p": {"S": patient_key}},
            "ConsistentRead": True,
        }
        while True:
            response = self.client.query(**kwargs)
            states.extend(self._state(item) for item in response.get("Items", []))
            if "LastEvaluatedKey" not in response:
                return states
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _conditional(self, **kwargs: Any) -> bool:
        try:
            self.client.update_item(TableName=self.table_name, **kwargs)
        except self.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def claim(self, key: SeriesKey, generation: int, now: float, lease_seconds: int) -> bool:
        """Take the series' conversion lease for ``generation``.

        Returns:
            True when claimed: the series is at that generation, not converted at it, and
            no live lease is held. False otherwise (re-read to see why).
        """
        return self._conditional(
            Key=self._key(key),
            UpdateExpression="SET claimed_generation = :g, lease_until = :until",
            ConditionExpression=(
                "generation = :g "
                "AND (attribute_not_exists(converted_generation) OR converted_generation < :g) "
                "AND (attribute_not_exists(lease_until) OR lease_until < :now)"
            ),
            ExpressionAttributeValues={
                ":g": {"N": str(generation)},
                ":now": {"N": repr(float(now))},
                ":until": {"N": repr(float(now + lease_seconds))},
            },
        )

    def complete(self, key: SeriesKey, generation: int) -> bool:
        """Record that ``generation`` was converted and drop the lease; False if not held."""
        return self._conditional(
            Key=self._key(key),
            UpdateExpression=(
                "SET converted_generation = :g REMOVE claimed_generation, lease_until"
            ),
            ConditionExpression="claimed_generation = :g",
            ExpressionAttributeValues={":g": {"N": str(generation)}},
        )

    def release(self, key: SeriesKey, generation: int) -> bool:
        """Drop the lease of a failed conversion (a retry may claim at once)."""
        return self._conditional(
            Key=self._key(key),
            UpdateExpression="REMOVE claimed_generation, lease_until",
            ConditionExpression="claimed_generation = :g",
            ExpressionAttributeValues={":g": {"N": str(generation)}},
        )


@dataclass(frozen=True)
class TimerMessage:
    """The body of a settle timer message."""

    key: SeriesKey
    generation: int
    #: When the series is due to settle (epoch seconds), if no instance arrives before.
    due: float

    def body(self) -> str:
        """Return the message body (JSON: pseudonymous key, UID, numbers only)."""
        return json.dumps(
            {
                "patient_key": self.key.patient_key,
                "series": self.key.series,
                "generation": self.generation,
                "due": self.due,
            },
            sort_keys=True,
        )

    @classmethod
    def from_body(cls, body: str) -> TimerMessage:
        """Parse a message body.

        Raises:
            SettleError: not JSON, a field missing or of the wrong kind (the message names
                the field, never the body).
        """
        try:
            document = json.loads(body)
            generation = document["generation"]
            if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
                raise SettleError("settle message: generation must be a positive integer")
            return cls(
                key=SeriesKey(str(document["patient_key"]), str(document["series"])),
                generation=generation,
                due=float(document["due"]),
            )
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise SettleError(f"settle message: not a settle timer ({type(e).__name__})") from e
        except KeyError as e:
            raise SettleError(f"settle message: missing field {e}") from e


class SettleTimer:
    """The timer queue behind an SQS client."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self.client = client
        self.queue_url = queue_url

    def start(self, message: TimerMessage, now: float) -> int:
        """Send the timer so that it is delivered at ``message.due`` (or 900 s, the SQS
        maximum, whichever is sooner: then :func:`settle` sends it on). Return the delay."""
        delay = min(MAX_SQS_DELAY, max(0, math.ceil(message.due - now)))
        self.client.send_message(
            QueueUrl=self.queue_url, MessageBody=message.body(), DelaySeconds=delay
        )
        return delay


def instance_arrived(
    table: SettleTable,
    timer: SettleTimer,
    key: SeriesKey,
    now: float,
    *,
    run_id: str,
    modality: str,
    settle_seconds: int,
) -> int:
    """Record a de-identified instance and (re)start its series' timer; return the generation.

    Called after each successful de-identification. The timer of the previous instance
    still fires, finds a later generation and is dropped: this one replaces it.
    """
    generation = table.record(key, now, run_id=run_id, modality=modality)
    timer.start(TimerMessage(key, generation, now + settle_seconds), now)
    return generation


def after_deid(
    table: SettleTable,
    timer: SettleTimer,
    item_status: str,
    summary: Mapping[str, Any],
    now: float,
    *,
    run_id: str,
    settle_seconds: int,
) -> int | None:
    """Start the settle timer of a de-identification's series (the hook of the de-id path).

    ``item_status`` and ``summary`` are those of the de-id item
    (:func:`oncopipe.imaging.stage.deidentify_object`). A quarantined object has no
    series: no timer. A de-identified one adds an instance and restarts the timer. A
    skipped one (its manifest existed: a duplicate event, or a retry after this hook
    failed) adds no instance, but the timer is sent again when the series is not converted
    at its current generation (or recorded, when it is not tracked yet), so a hook that
    failed between the de-id and the timer is mended by the retry.

    Returns:
        The series' current generation, or None for an object that is not an instance.

    Raises:
        SettleError: the summary's patient key or series UID is not usable as a key.
    """
    if summary.get("status") != "deidentified":
        return None
    key = SeriesKey(str(summary.get("patient_key", "")), str(summary.get("series", "")))
    modality = str(summary.get("modality", ""))
    if item_status == "skipped":
        state = table.get(key)
        if state is not None:
            if state.converted_generation < state.generation:
                due = state.last_arrival + settle_seconds
                timer.start(TimerMessage(key, state.generation, due), now)
            return state.generation
    return instance_arrived(table, timer, key, now, run_id=run_id, modality=modality,
                            settle_seconds=settle_seconds)  # fmt: skip


@dataclass(frozen=True)
class SettledSeries:
    """A series that settled: what a :data:`Conversion` converts."""

    key: SeriesKey
    generation: int
    run_id: str
    modality: str
    #: The image series whose volume (and masks) to build: the series itself, or, for a
    #: structure set (RTSTRUCT/SEG), the patient's image series of the same run.
    targets: tuple[str, ...]


#: Converts a settled series; returns a small JSON-able summary (statuses, counts; no
#: PHI). Raises to have the message retried.
Conversion = Callable[[SettledSeries], Mapping[str, Any]]


@dataclass(frozen=True)
class SettleOutcome:
    """What :func:`settle` did with one message (``status`` is a code)."""

    status: str  # restarted | duplicate | untracked | waiting | converted | no-targets
    key: SeriesKey
    generation: int
    detail: Mapping[str, Any] = field(default_factory=dict)


def _targets(table: SettleTable, state: SeriesState) -> tuple[str, ...]:
    if state.modality not in STRUCTURE_MODALITIES:
        return (state.key.series,)
    return tuple(
        sorted(
            s.key.series
            for s in table.patient_series(state.key.patient_key)
            if s.modality not in STRUCTURE_MODALITIES and s.run_id == state.run_id
        )
    )


def settle(
    message: TimerMessage,
    *,
    table: SettleTable,
    timer: SettleTimer,
    convert: Conversion,
    now: float,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
) -> SettleOutcome:
    """Handle one timer message; return what was done.

    Raises:
        SeriesBusyError: another conversion holds the series' lease (retry the message).
        Whatever ``convert`` raises, after the lease was released (retry the message).
    """
    key, generation = message.key, message.generation

    def outcome(status: str, **detail: Any) -> SettleOutcome:
        return SettleOutcome(status, key, generation, detail)

    state = table.get(key)
    if state is None or state.generation < generation:
        return outcome("untracked")  # the tracker was reset: the daily sweep covers it
    if state.generation > generation:
        return outcome("restarted", current=state.generation)
    if state.converted_generation >= generation:
        return outcome("duplicate")
    if now < message.due:
        # longer than one SQS delay: send it on; a new instance meanwhile makes it stale
        return outcome("waiting", delay=timer.start(message, now))
    if not table.claim(key, generation, now, lease_seconds):
        again = table.get(key)
        if again is not None and again.generation > generation:
            return outcome("restarted", current=again.generation)
        if again is not None and again.converted_generation >= generation:
            return outcome("duplicate")
        raise SeriesBusyError(f"series {key.label}: another conversion holds its lease")
    try:
        targets = _targets(table, state)
        summary = (
            convert(SettledSeries(key, generation, state.run_id, state.modality, targets))
            if targets
            else {}
        )
    except BaseException:
        table.release(key, generation)
        raise
    table.complete(key, generation)
    if not targets:
        return outcome("no-targets", run_id=state.run_id)
    return outcome("converted", run_id=state.run_id, targets=len(targets), **dict(summary))


def handle_records(
    records: Sequence[Mapping[str, Any]], handle: Callable[[TimerMessage], SettleOutcome]
) -> tuple[list[SettleOutcome], list[dict[str, str]]]:
    """Handle an SQS batch one message at a time; one failure never stops the others.

    Returns:
        The outcomes, and the ``batchItemFailures`` entries of the messages to retry
        (a busy series or a failed conversion). A message that is not a settle timer is
        logged by its id and dropped: retrying cannot mend it.
    """
    outcomes: list[SettleOutcome] = []
    failures: list[dict[str, str]] = []
    for record in records:
        message_id = str(record.get("messageId", ""))
        try:
            message = TimerMessage.from_body(str(record.get("body", "")))
        except SettleError as e:
            logger.error("settle message %s dropped: %s", message_id, e)
            continue
        try:
            outcomes.append(handle(message))
        except SeriesBusyError:
            logger.info("series %s busy; message %s retried", message.key.label, message_id)
            failures.append({"itemIdentifier": message_id})
        except Exception as e:  # noqa: BLE001 - the per-message boundary: retry it
            # the series label is pseudonymous; the error's message may name an object
            logger.error(
                "settle of series %s failed (%s); message %s retried",
                message.key.label, type(e).__name__, message_id,
            )  # fmt: skip
            failures.append({"itemIdentifier": message_id})
    return outcomes, failures


def _counts(results: Sequence[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for result in results:
        status = str(result.summary.get("status", result.status))
        counts[status] = counts.get(status, 0) + 1
    return counts


class SettleConversionError(OncopipeError):
    """A settled series' volume failed unexpectedly (the message is retried)."""


@dataclass(frozen=True)
class InProcessConversion:
    """Build the targets' volumes and masks, then their radiomics, in this process.

    For the local mode and tests; radiomics imports PyRadiomics, so ``radiomics=False``
    stops after the volumes. Returns per-step status counts.

    Raises:
        SettleConversionError: a target's volume failed unexpectedly (``failed``).
    """

    store: Any
    buckets: layout.Buckets
    radiomics: bool = True
    params_path: str | None = None

    def __call__(self, settled: SettledSeries) -> Mapping[str, Any]:
        from oncopipe.imaging.stage import build_series_volumes

        volumes = build_series_volumes(
            self.store, self.buckets, settled.run_id, series=settled.targets
        )
        if any(r.status == "failed" for r in volumes):
            raise SettleConversionError(f"series {settled.key.label}: a volume failed")
        summary: dict[str, Any] = {"volumes": _counts(volumes)}
        converted = [r.item for r in volumes if r.summary.get("status") == "converted"]
        if self.radiomics and converted:
            from oncopipe.radiomics.stage import build_series_features

            features = build_series_features(
                self.store, self.buckets, settled.run_id,
                params_path=self.params_path, series=converted,
            )  # fmt: skip
            summary["radiomics"] = _counts(features)
        return summary


def execution_name(settled: SettledSeries) -> str:
    """Return the Step Functions execution name of one conversion (<= 80 characters).

    The same series and generation always give the same name, so a second start of the
    same conversion is refused by Step Functions instead of running twice.
    """
    digest = hashlib.sha256(settled.key.label.encode("utf-8")).hexdigest()[:32]
    return f"settle-{digest}-g{settled.generation}"


@dataclass(frozen=True)
class StateMachineConversion:
    """Start the per-series imaging state machine (volume job, then radiomics job).

    Its input: ``{"run_id", "patient_key", "series": [targets], "generation"}``, only
    pseudonymous keys and de-identified UIDs. Returns ``{"execution": "started"}`` or
    ``"already-started"`` (a retried message after the start succeeded).
    """

    client: Any
    state_machine_arn: str

    def __call__(self, settled: SettledSeries) -> Mapping[str, Any]:
        document = {
            "run_id": settled.run_id,
            "patient_key": settled.key.patient_key,
            "series": list(settled.targets),
            "generation": settled.generation,
        }
        try:
            self.client.start_execution(
                stateMachineArn=self.state_machine_arn,
                name=execution_name(settled),
                input=json.dumps(document, sort_keys=True),
            )
        except self.client.exceptions.ExecutionAlreadyExists:
            return {"execution": "already-started"}
        return {"execution": "started"}


@dataclass(frozen=True)
class SettleSettings:
    """The environment of the settle handler, and of the de-id path that starts timers."""

    table_name: str
    queue_url: str
    settle_seconds: int
    #: The per-series imaging state machine ("" where not needed: the de-id path).
    state_machine_arn: str = ""

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, consumer: bool = False
    ) -> SettleSettings:
        """Return the settings; ``consumer`` (the settle handler) also needs the state
        machine (``SETTLE_STATE_MACHINE_ARN``).

        Raises:
            ConfigError: a variable is missing or empty (all are named), or the settle
                time is not valid (:func:`validate_settle_seconds`).
        """
        env = os.environ if environ is None else environ
        names = (TABLE_ENV, QUEUE_ENV, *((STATE_MACHINE_ENV,) if consumer else ()))
        missing = [n for n in names if not env.get(n)]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")
        return cls(
            table_name=env[TABLE_ENV],
            queue_url=env[QUEUE_ENV],
            settle_seconds=validate_settle_seconds(
                env.get(SECONDS_ENV, str(DEFAULT_SETTLE_SECONDS))
            ),
            state_machine_arn=env.get(STATE_MACHINE_ENV, ""),
        )
