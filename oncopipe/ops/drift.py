"""CloudFormation drift of the app's stacks: detection, severities, allow-list, coverage.

:func:`detect` runs CloudFormation's own drift detection on every stack it is given and
returns one :class:`DriftReport`:

1. ``DetectStackDrift`` is started on every stack at once (detection takes minutes on real
   stacks), then ``DescribeStackDriftDetectionStatus`` is polled until each one is
   ``DETECTION_COMPLETE`` or ``DETECTION_FAILED``. A failed detection often has partial
   results (a resource it could not read): its results are collected and its reason is
   reported.
2. For each finished stack, ``ListStackResources`` counts the resources and names those
   whose drift was not checked (``NOT_CHECKED``: the type does not support drift
   detection; ``UNKNOWN``: it could not be read), which gives the coverage (checked /
   total); ``DescribeStackResourceDrifts`` (MODIFIED, DELETED, UNKNOWN) gives the details.
3. CloudFormation does not detect drift in nested stacks: each ``AWS::CloudFormation::Stack``
   resource is detected as a stack of its own (recursively), reported with its parent.

A stack that does not exist is reported as ``NOT_DEPLOYED``; an API error on a stack
(access denied, throttling after retries) as ``ERROR`` with the message, and a detection
that outlives the timeout as ``TIMED_OUT``: :attr:`DriftReport.errors` lists them.

Every drift (one property difference, or a deleted resource) gets a severity
(:func:`severity`: IAM, KMS key policy and rotation, bucket policy and public access /
encryption of buckets, Lake Formation, security groups and VPC endpoints are critical) and
may be silenced by the configuration's allow-list (``drift_allow_list`` of ``cdk.json``):
an allowed drift is reported with the entry's reason and never counts for ``--fail-on``.

The CloudFormation client is any object with the four boto3 methods used here
(:class:`CloudFormationClient`). Nothing here logs property values.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, Literal, Protocol

from oncopipe.deployment import DriftAllowEntry
from oncopipe.errors import OncopipeError
from oncopipe.settings import BUCKET_ENV

logger = logging.getLogger(__name__)

Severity = Literal["critical", "warning"]
FailOn = Literal["critical", "any", "never"]

#: Stack statuses of the report besides CloudFormation's IN_SYNC / DRIFTED / UNKNOWN /
#: NOT_CHECKED: the stack does not exist, an API call failed, the detection outlived the timeout.
NOT_DEPLOYED = "NOT_DEPLOYED"
ERROR = "ERROR"
TIMED_OUT = "TIMED_OUT"

#: Resource drift statuses that mean "not checked" (no coverage).
UNCHECKED_STATUSES = frozenset({"NOT_CHECKED", "UNKNOWN", "UNSUPPORTED"})
NESTED_STACK_TYPE = "AWS::CloudFormation::Stack"

#: (resource type glob, property path glob): a drift matching one is critical. The property
#: path of a deleted resource is "" (so ``*`` also makes a deletion critical).
CRITICAL_RULES: tuple[tuple[str, str], ...] = (
    ("AWS::IAM::*", "*"),
    ("AWS::KMS::Key", "/KeyPolicy*"),
    ("AWS::KMS::Key", "/EnableKeyRotation"),
    ("AWS::KMS::Key", ""),
    ("AWS::S3::BucketPolicy", "*"),
    ("AWS::S3::Bucket", "/PublicAccessBlockConfiguration*"),
    ("AWS::S3::Bucket", "/BucketEncryption*"),
    ("AWS::LakeFormation::*", "*"),
    ("AWS::EC2::SecurityGroup*", "*"),
    ("AWS::EC2::VPCEndpoint", "*"),
)


class DriftDetectionError(OncopipeError):
    """Drift could not be detected at all (no credentials, no region)."""


class CloudFormationClient(Protocol):
    """The boto3 CloudFormation client methods :func:`detect` calls."""

    def detect_stack_drift(self, **kwargs: Any) -> dict[str, Any]: ...

    def describe_stack_drift_detection_status(self, **kwargs: Any) -> dict[str, Any]: ...

    def describe_stack_resource_drifts(self, **kwargs: Any) -> dict[str, Any]: ...

    def list_stack_resources(self, **kwargs: Any) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ResourceDrift:
    """One drift: a property difference of a MODIFIED resource, or a DELETED resource."""

    stack: str
    logical_id: str
    physical_id: str
    resource_type: str
    #: MODIFIED or DELETED.
    status: str
    #: JSON pointer of the property ("/PolicyDocument/Statement/0/Action"); "" if deleted.
    property_path: str
    #: ADD, REMOVE or NOT_EQUAL; "" for a deleted resource.
    difference_type: str
    expected: str | None
    actual: str | None
    severity: Severity
    #: The reason of the allow-list entry that silences this drift, else None.
    allowed_reason: str | None = None

    @property
    def allowed(self) -> bool:
        """Return whether the allow-list silences this drift."""
        return self.allowed_reason is not None


@dataclass(frozen=True)
class UncheckedResource:
    """A resource whose drift CloudFormation did not check."""

    logical_id: str
    physical_id: str
    resource_type: str
    #: NOT_CHECKED, UNKNOWN or UNSUPPORTED.
    status: str
    #: CloudFormation's reason, where it gives one (UNKNOWN resources).
    reason: str = ""


@dataclass(frozen=True)
class StackDrift:
    """The drift of one stack (nested stacks are StackDrifts of their own)."""

    name: str
    #: IN_SYNC, DRIFTED, UNKNOWN, NOT_CHECKED (CloudFormation), or NOT_DEPLOYED, ERROR,
    #: TIMED_OUT (see the module).
    status: str
    #: DETECTION_COMPLETE, DETECTION_FAILED or DETECTION_IN_PROGRESS (timed out); "" when
    #: no detection ran.
    detection_status: str = ""
    #: CloudFormation's DetectionStatusReason, or the error / timeout message.
    reason: str = ""
    #: Name of the parent stack of a nested stack, and the nested stack's logical ID there.
    parent: str = ""
    parent_logical_id: str = ""
    #: Resources of the stack (nested stack resources excluded: they are reported as stacks).
    total_resources: int = 0
    unchecked: tuple[UncheckedResource, ...] = ()
    drifts: tuple[ResourceDrift, ...] = ()
    #: Names of the nested stacks detected on behalf of this one.
    nested: tuple[str, ...] = ()
    #: When CloudFormation finished the detection (ISO 8601), "" if it did not.
    detected_at: str = ""

    @property
    def checked_resources(self) -> int:
        """Return the number of resources whose drift was checked."""
        return self.total_resources - len(self.unchecked)

    @property
    def coverage(self) -> float | None:
        """Return checked / total resources, or None when nothing was listed."""
        return self.checked_resources / self.total_resources if self.total_resources else None

    @property
    def drifted_resources(self) -> int:
        """Return the number of resources with at least one drift (allowed or not)."""
        return len({d.logical_id for d in self.drifts})

    @property
    def failed(self) -> bool:
        """Return whether this stack could not be (fully) detected: error or timeout."""
        return self.status in (ERROR, TIMED_OUT)


@dataclass(frozen=True)
class DriftReport:
    """The drift of every stack asked for, nested stacks after their parent."""

    stacks: tuple[StackDrift, ...]
    environment: str = ""
    generated_at: str = field(default_factory=lambda: _iso(datetime.now(UTC)))

    @property
    def drifts(self) -> list[ResourceDrift]:
        """Return every drift of every stack."""
        return [d for s in self.stacks for d in s.drifts]

    @property
    def unallowed(self) -> list[ResourceDrift]:
        """Return the drifts the allow-list does not silence."""
        return [d for d in self.drifts if not d.allowed]

    @property
    def drifted_resources(self) -> int:
        """Return the number of resources with at least one drift not allowed."""
        return len({(d.stack, d.logical_id) for d in self.unallowed})

    @property
    def critical_resources(self) -> int:
        """Return the number of resources with at least one critical drift not allowed."""
        return len({(d.stack, d.logical_id) for d in self.unallowed if d.severity == "critical"})

    @property
    def errors(self) -> list[StackDrift]:
        """Return the stacks whose detection failed with an API error or timed out."""
        return [s for s in self.stacks if s.failed]

    def exit_code(self, fail_on: FailOn) -> int:
        """Return the exit code a CI job gates on.

        Returns:
            2 when a stack could not be detected (:attr:`errors`); else 1 when ``fail_on``
            is ``critical`` and a critical drift is not allowed, or ``any`` and any drift is
            not allowed; else 0 (also always 0 drift-wise with ``never``).
        """
        if self.errors:
            return 2
        if fail_on == "critical" and self.critical_resources:
            return 1
        if fail_on == "any" and self.unallowed:
            return 1
        return 0


@dataclass(frozen=True)
class Progress:
    """One progress event of :func:`detect` (for a line on stderr)."""

    #: started, waiting, finished, not-deployed, error, timed-out
    event: str
    stack: str = ""
    #: The stack's status when finished, or the number of pending stacks when waiting.
    detail: str = ""
    elapsed_s: float = 0.0


def severity(resource_type: str, property_path: str) -> Severity:
    """Return the severity of a drift of ``resource_type`` at ``property_path`` ("" = deleted)."""
    for type_glob, path_glob in CRITICAL_RULES:
        if fnmatchcase(resource_type, type_glob) and fnmatchcase(property_path, path_glob):
            return "critical"
    return "warning"


def allowed_by(
    allow_list: Iterable[DriftAllowEntry], stack: str, logical_id: str, property_path: str
) -> DriftAllowEntry | None:
    """Return the first allow-list entry matching the drift, or None."""
    for entry in allow_list:
        if (
            fnmatchcase(stack, entry.stack)
            and fnmatchcase(logical_id, entry.logical_id)
            and fnmatchcase(property_path, entry.property_path)
        ):
            return entry
    return None


@dataclass
class _Pending:
    stack_id: str  # what the API is called with: a name, or a nested stack's ARN
    name: str
    parent: str
    parent_logical_id: str


def detect(
    cfn: CloudFormationClient,
    stack_names: Sequence[str],
    *,
    allow_list: Sequence[DriftAllowEntry] = (),
    environment: str = "",
    poll_s: float = 10.0,
    timeout_s: float = 1800.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[Progress], None] | None = None,
) -> DriftReport:
    """Detect the drift of ``stack_names`` (and their nested stacks); return the report.

    ``poll_s`` is the pause between two rounds of status calls, ``timeout_s`` the longest
    wait for all detections; ``sleep``, ``clock`` and ``progress`` let a caller (or a test)
    drive the waiting and show it.

    Returns:
        One :class:`StackDrift` per stack in the order given, each followed by its nested
        stacks. Per-stack failures are in the report (:attr:`DriftReport.errors`), not raised.

    Raises:
        DriftDetectionError: no credentials or no region is configured (nothing can run).
    """
    from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError

    emit = progress or (lambda _event: None)
    start = clock()
    results: dict[str, StackDrift] = {}
    order: list[str] = []
    pending: dict[str, _Pending] = {}

    def elapsed() -> float:
        return clock() - start

    def begin(item: _Pending) -> None:
        order.append(item.name)
        try:
            response = cfn.detect_stack_drift(StackName=item.stack_id)
        except ClientError as e:
            if _is_missing_stack(e):
                results[item.name] = _stack(item, NOT_DEPLOYED, reason="stack does not exist")
                emit(Progress("not-deployed", item.name, elapsed_s=elapsed()))
            else:
                results[item.name] = _stack(
                    item, ERROR, reason=_client_error(e, "DetectStackDrift")
                )
                emit(Progress("error", item.name, _error_code(e), elapsed()))
            return
        pending[response["StackDriftDetectionId"]] = item
        emit(Progress("started", item.name, elapsed_s=elapsed()))

    try:
        for name in stack_names:
            begin(_Pending(stack_id=name, name=name, parent="", parent_logical_id=""))
        while pending:
            for detection_id, item in list(pending.items()):
                try:
                    status = cfn.describe_stack_drift_detection_status(
                        StackDriftDetectionId=detection_id
                    )
                except ClientError as e:
                    del pending[detection_id]
                    results[item.name] = _stack(
                        item, ERROR, reason=_client_error(e, "DescribeStackDriftDetectionStatus")
                    )
                    emit(Progress("error", item.name, _error_code(e), elapsed()))
                    continue
                if status["DetectionStatus"] == "DETECTION_IN_PROGRESS":
                    continue
                del pending[detection_id]
                stack, children = _collect(cfn, item, status, allow_list)
                results[item.name] = stack
                emit(Progress("finished", item.name, stack.status, elapsed()))
                for child in children:
                    begin(child)
            if not pending:
                break
            if clock() - start >= timeout_s:
                for item in pending.values():
                    results[item.name] = _stack(
                        item,
                        TIMED_OUT,
                        detection_status="DETECTION_IN_PROGRESS",
                        reason=f"detection still running after {timeout_s:.0f} s",
                    )
                    emit(Progress("timed-out", item.name, elapsed_s=elapsed()))
                break
            emit(Progress("waiting", detail=str(len(pending)), elapsed_s=elapsed()))
            sleep(poll_s)
    except (NoCredentialsError, NoRegionError) as e:
        raise DriftDetectionError(
            f"cannot call CloudFormation: {e} (configure AWS credentials and a region: "
            "AWS_PROFILE / AWS_REGION or the standard AWS configuration)"
        ) from e
    nested = {child for n in order for child in results[n].nested}

    def tree(names: Iterable[str]) -> Iterable[StackDrift]:
        for name in names:
            yield results[name]
            yield from tree(results[name].nested)

    return DriftReport(
        stacks=tuple(tree(n for n in order if n not in nested)), environment=environment
    )


def _stack(
    item: _Pending, status: str, *, detection_status: str = "", reason: str = ""
) -> StackDrift:
    return StackDrift(
        name=item.name,
        status=status,
        detection_status=detection_status,
        reason=reason,
        parent=item.parent,
        parent_logical_id=item.parent_logical_id,
    )


def _collect(
    cfn: CloudFormationClient,
    item: _Pending,
    status: dict[str, Any],
    allow_list: Sequence[DriftAllowEntry],
) -> tuple[StackDrift, list[_Pending]]:
    """Return the finished stack's drift and the nested stacks still to detect."""
    from botocore.exceptions import ClientError

    detection = status["DetectionStatus"]
    base = _stack(
        item,
        status.get("StackDriftStatus", "UNKNOWN"),
        detection_status=detection,
        reason=status.get("DetectionStatusReason", ""),
    )
    try:
        summaries = _pages(
            cfn.list_stack_resources, "StackResourceSummaries", StackName=item.stack_id
        )
        details = _pages(
            cfn.describe_stack_resource_drifts,
            "StackResourceDrifts",
            StackName=item.stack_id,
            StackResourceDriftStatusFilters=["MODIFIED", "DELETED", "UNKNOWN"],
            MaxResults=100,
        )
    except ClientError as e:
        return (
            StackDrift(**{**_fields(base), "status": ERROR, "reason": _client_error(e, "results")}),
            [],
        )
    by_id = {d["LogicalResourceId"]: d for d in details}
    children: list[_Pending] = []
    unchecked: list[UncheckedResource] = []
    total = 0
    for summary in summaries:
        logical_id = summary["LogicalResourceId"]
        physical_id = summary.get("PhysicalResourceId", "")
        if summary["ResourceType"] == NESTED_STACK_TYPE:
            if physical_id:
                children.append(
                    _Pending(
                        stack_id=physical_id,
                        name=_stack_name(physical_id),
                        parent=item.name,
                        parent_logical_id=logical_id,
                    )
                )
            continue
        total += 1
        drift_status = summary.get("DriftInformation", {}).get("StackResourceDriftStatus", "")
        if drift_status in UNCHECKED_STATUSES or not drift_status:
            unchecked.append(
                UncheckedResource(
                    logical_id=logical_id,
                    physical_id=physical_id,
                    resource_type=summary["ResourceType"],
                    status=drift_status or "NOT_CHECKED",
                    reason=by_id.get(logical_id, {}).get("DriftStatusReason", ""),
                )
            )
    drifts = [
        drift
        for detail in details
        if detail["StackResourceDriftStatus"] in ("MODIFIED", "DELETED")
        for drift in _resource_drifts(item.name, detail, allow_list)
    ]
    stack = StackDrift(
        **{
            **_fields(base),
            "total_resources": total,
            "unchecked": tuple(unchecked),
            "drifts": tuple(drifts),
            "nested": tuple(c.name for c in children),
            "detected_at": _iso(status["Timestamp"]) if status.get("Timestamp") else "",
        }
    )
    logger.info(
        "drift of %s: %s, %d drifted resources, %d of %d resources checked",
        item.name,
        stack.status,
        stack.drifted_resources,
        stack.checked_resources,
        stack.total_resources,
    )
    return stack, children


def _resource_drifts(
    stack: str, detail: dict[str, Any], allow_list: Sequence[DriftAllowEntry]
) -> list[ResourceDrift]:
    status = detail["StackResourceDriftStatus"]
    differences = detail.get("PropertyDifferences") or []
    # A deleted resource (or a modified one CloudFormation lists no difference for) is one row.
    rows: list[tuple[str, str, str | None, str | None]] = [
        (p["PropertyPath"], p["DifferenceType"], p.get("ExpectedValue"), p.get("ActualValue"))
        for p in differences
    ] or [("", "", None, None)]
    drifts = []
    for path, difference, expected, actual in rows:
        entry = allowed_by(allow_list, stack, detail["LogicalResourceId"], path)
        drifts.append(
            ResourceDrift(
                stack=stack,
                logical_id=detail["LogicalResourceId"],
                physical_id=detail.get("PhysicalResourceId", ""),
                resource_type=detail["ResourceType"],
                status=status,
                property_path=path,
                difference_type=difference,
                expected=expected,
                actual=actual,
                severity=severity(detail["ResourceType"], path),
                allowed_reason=entry.reason if entry else None,
            )
        )
    return drifts


def _pages(method: Callable[..., dict[str, Any]], key: str, **kwargs: Any) -> list[dict[str, Any]]:
    """Return every item of a NextToken-paginated call."""
    items: list[dict[str, Any]] = []
    token = None
    while True:
        response = method(**kwargs, **({"NextToken": token} if token else {}))
        items.extend(response.get(key, []))
        token = response.get("NextToken")
        if not token:
            return items


def _fields(stack: StackDrift) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(stack, f.name) for f in fields(stack)}


def _stack_name(stack_id: str) -> str:
    """Return the name in a stack ARN (``arn:...:stack/NAME/uuid``), or the id itself."""
    parts = stack_id.split(":", 5)
    if len(parts) == 6 and parts[5].startswith("stack/"):
        return parts[5].split("/")[1]
    return stack_id


def _error_code(e: Any) -> str:
    return str(e.response.get("Error", {}).get("Code", "Unknown"))


def _is_missing_stack(e: Any) -> bool:
    error = e.response.get("Error", {})
    return error.get("Code") == "ValidationError" and "does not exist" in error.get("Message", "")


def _client_error(e: Any, operation: str) -> str:
    error = e.response.get("Error", {})
    code = error.get("Code", "Unknown")
    message = error.get("Message", "")
    hint = ""
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation"):
        hint = (
            " (the caller needs cloudformation:DetectStackDrift, DetectStackResourceDrift, "
            "DescribeStackDriftDetectionStatus, DescribeStackResourceDrifts, "
            "ListStackResources, and read access to the stack's resources)"
        )
    elif code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId"):
        hint = " (refresh the AWS credentials)"
    return f"{operation}: {code}: {message}{hint}"


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_cloudformation_client(region: str | None = None) -> Any:
    """Return a CloudFormation client of the standard AWS configuration (retries: standard).

    Raises:
        DriftDetectionError: no region is configured.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import NoRegionError

    try:
        return boto3.client(
            "cloudformation",
            region_name=region,
            config=Config(retries={"mode": "standard", "max_attempts": 8}),
        )
    except NoRegionError as e:
        raise DriftDetectionError(
            "no AWS region configured: pass --region or set AWS_REGION / a profile's region"
        ) from e


#: Environment variables of the scheduled drift check (:class:`DriftSettings`).
ENV_ENVIRONMENT = "ONCOPIPE_ENV"
ENV_STACKS = "DRIFT_STACK_NAMES"
ENV_ALLOW_LIST = "DRIFT_ALLOW_LIST"
ENV_POLL = "DRIFT_POLL_SECONDS"
ENV_BUCKET = BUCKET_ENV["artifacts"]


@dataclass(frozen=True)
class DriftSettings:
    """Runtime settings of the scheduled drift check (the Lambda function's environment)."""

    environment: str
    stack_names: tuple[str, ...]
    artifacts_bucket: str
    allow_list: tuple[DriftAllowEntry, ...] = ()
    poll_s: float = 15.0

    @classmethod
    def for_config(cls, config: Any, artifacts_bucket: str) -> DriftSettings:
        """Return the settings of an environment's configuration (an ``EnvConfig``)."""
        from oncopipe.deployment import stack_names

        return cls(
            environment=config.name,
            stack_names=tuple(stack_names(config)),
            artifacts_bucket=artifacts_bucket,
            allow_list=tuple(config.drift_allow_list),
        )

    def as_env(self) -> dict[str, str]:
        """Return the environment variables that :meth:`from_env` reads."""
        import json

        return {
            ENV_ENVIRONMENT: self.environment,
            ENV_STACKS: ",".join(self.stack_names),
            ENV_BUCKET: self.artifacts_bucket,
            ENV_ALLOW_LIST: json.dumps([e.as_dict() for e in self.allow_list]),
            ENV_POLL: f"{self.poll_s:g}",
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DriftSettings:
        """Return the settings from the environment.

        Raises:
            ConfigError: a variable is missing, or the allow-list / poll interval is invalid.
        """
        import json
        import os

        from oncopipe.deployment import ConfigurationError, parse_drift_allow_list
        from oncopipe.errors import ConfigError

        env = os.environ if environ is None else environ
        missing = [n for n in (ENV_ENVIRONMENT, ENV_STACKS, ENV_BUCKET) if not env.get(n)]
        if missing:
            raise ConfigError(f"missing environment variables: {', '.join(missing)}")
        try:
            allow_list = parse_drift_allow_list(
                json.loads(env.get(ENV_ALLOW_LIST) or "[]"), where=ENV_ALLOW_LIST
            )
            poll_s = float(env.get(ENV_POLL) or 15)
        except (ValueError, ConfigurationError) as e:  # JSONDecodeError is a ValueError
            raise ConfigError(f"invalid drift settings: {e}") from e
        if not 1 <= poll_s <= 300:
            raise ConfigError(f"{ENV_POLL}: {poll_s:g} is outside 1..300 seconds")
        names = tuple(n.strip() for n in env[ENV_STACKS].split(",") if n.strip())
        return cls(
            environment=env[ENV_ENVIRONMENT],
            stack_names=names,
            artifacts_bucket=env[ENV_BUCKET],
            allow_list=allow_list,
            poll_s=poll_s,
        )


def report_key(moment: datetime) -> str:
    """Return the artifacts-bucket key of the report of a check at ``moment`` (UTC date)."""
    return f"ops/drift/{moment.astimezone(UTC).date().isoformat()}/report.json"
