"""Deployment of an approved model package version to the real-time endpoint (issue 12 §3).

The steps of the deploy state machine (:mod:`stacks.components.model_deploy`), one call of
the ``model_deploy`` function each: :func:`verify` (Approved, four eyes, a drift baseline,
the artefact still hashes to the registered ``artifact_sha256``; else :class:`DeployError`
and nothing is created), :func:`prepare` (the version's Model and EndpointConfig, each only
when missing; the endpoint action), :func:`apply` (create, or update blue/green with
auto-rollback alarms), :func:`status`, :func:`publish_baseline` (the drift baseline where
the drift job reads it). Names are deterministic per version (``<endpoint>-v<version>``):
a repeated EventBridge delivery finds what the first created. Clients are passed in; logs
carry versions, names and decisions, never a principal.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from botocore.exceptions import ClientError

from oncopipe.errors import ConfigError, OncopipeError
from oncopipe.governance import APPROVED, GovernanceError, artifact_digest, package_version, review
from oncopipe.layout import ARTIFACTS_DATA_CAPTURE, ARTIFACTS_EVALUATION, ARTIFACTS_MODELS
from oncopipe.settings import BUCKET_ENV

logger = logging.getLogger(__name__)

#: The variant the endpoint serves (the container reads it from its environment).
VARIANT = "pruned"
#: SageMaker's rule for model, endpoint-configuration and endpoint names.
NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
NAME_MAX = 63
#: The longest endpoint name: its version names (``-v<n>``) must fit NAME_MAX.
ENDPOINT_NAME_MAX = NAME_MAX - 8
TRAFFIC_TYPES = ("ALL_AT_ONCE", "CANARY")
#: EndpointStatus values of a deployment still running.
IN_PROGRESS = ("Creating", "Updating", "SystemUpdating", "RollingBack")
MAX_ALARMS = 10  # SageMaker's AutoRollbackConfiguration limit
#: Where a registered drift baseline may be read from (the pipeline writes ``evaluation/``).
BASELINE_PREFIXES = (ARTIFACTS_EVALUATION, ARTIFACTS_MODELS)

Action = Literal["create", "update", "current", "busy"]


class DeployError(OncopipeError):
    """A version is not deployed (refused, or the endpoint cannot take it): says why."""


@dataclass(frozen=True)
class BlueGreen:
    """How an update shifts traffic to the new fleet (SageMaker deployment guardrails).

    ``traffic``: ALL_AT_ONCE, or CANARY (``canary_percent`` of the capacity first, for
    ``wait_seconds``; needs two instances or more). The old fleet is kept
    ``termination_wait_seconds`` after the shift; ``max_execution_seconds`` bounds it all.

    Raises:
        ConfigError: a value SageMaker does not accept.
    """

    traffic: str = "ALL_AT_ONCE"
    canary_percent: int = 10
    wait_seconds: int = 300
    termination_wait_seconds: int = 300
    max_execution_seconds: int = 3600

    def __post_init__(self) -> None:
        if self.traffic not in TRAFFIC_TYPES:
            raise ConfigError(f"blue/green traffic {self.traffic!r}: use ALL_AT_ONCE or CANARY")
        for name, low, high in (("canary_percent", 1, 50), ("wait_seconds", 0, 3600),
                                ("termination_wait_seconds", 0, 3600),
                                ("max_execution_seconds", 600, 28800)):  # fmt: skip
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"blue/green {name}: {getattr(self, name)} is outside "
                                  f"{low}..{high}")  # fmt: skip
        if self.max_execution_seconds <= self.wait_seconds + self.termination_wait_seconds:
            raise ConfigError("blue/green max_execution_seconds must exceed wait_seconds + "
                              "termination_wait_seconds")  # fmt: skip

    def deployment_config(self, alarm_names: Sequence[str]) -> dict[str, Any]:
        """Return UpdateEndpoint's ``DeploymentConfig`` (auto-rollback on ``alarm_names``)."""
        routing: dict[str, Any] = {"Type": self.traffic, "WaitIntervalInSeconds": self.wait_seconds}
        if self.traffic == "CANARY":
            routing["CanarySize"] = {"Type": "CAPACITY_PERCENT", "Value": self.canary_percent}
        config: dict[str, Any] = {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": self.termination_wait_seconds,
            "MaximumExecutionTimeoutInSeconds": self.max_execution_seconds}}  # fmt: skip
        if alarm_names:  # SageMaker takes 1 to 10, or no AutoRollbackConfiguration
            config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": n}
                                                              for n in alarm_names]}  # fmt: skip
        return config


#: DeploySettings field -> the environment variable it is read from.
ENV = {"group": "MODEL_PACKAGE_GROUP", "endpoint_name": "ENDPOINT_NAME",
       "artifacts_bucket": BUCKET_ENV["artifacts"], "artifacts_key_arn": "ARTIFACTS_KEY_ARN",
       "kms_key_arn": "ENDPOINT_KMS_KEY_ARN", "serving_role_arn": "SERVING_ROLE_ARN",
       "instance_type": "SERVING_INSTANCE_TYPE", "instance_count": "SERVING_INSTANCE_COUNT",
       "security_group_ids": "SECURITY_GROUP_IDS", "subnet_ids": "SUBNET_IDS",
       "rollback_alarm_names": "ROLLBACK_ALARM_NAMES"}  # fmt: skip
#: BlueGreen field -> its environment variable.
BLUE_GREEN_ENV = {"traffic": "DEPLOY_TRAFFIC", "canary_percent": "DEPLOY_CANARY_PERCENT",
                  "wait_seconds": "DEPLOY_WAIT_SECONDS",
                  "termination_wait_seconds": "DEPLOY_TERMINATION_WAIT_SECONDS",
                  "max_execution_seconds": "DEPLOY_MAX_EXECUTION_SECONDS"}  # fmt: skip


@dataclass(frozen=True)
class DeploySettings:
    """The deploy function's settings (its environment: :data:`ENV`, :data:`BLUE_GREEN_ENV`).

    ``kms_key_arn`` encrypts the endpoint's volumes and data capture; ``artifacts_key_arn``
    is the artifacts bucket's key, which the baseline is written with.
    """

    group: str
    endpoint_name: str
    artifacts_bucket: str
    artifacts_key_arn: str
    kms_key_arn: str
    serving_role_arn: str
    instance_type: str
    instance_count: int
    security_group_ids: tuple[str, ...]
    subnet_ids: tuple[str, ...]
    rollback_alarm_names: tuple[str, ...] = ()
    blue_green: BlueGreen = field(default_factory=BlueGreen)

    def as_env(self) -> dict[str, str]:
        """Return the environment variables :meth:`from_env` reads (CDK tokens pass through)."""
        env = {name: str(getattr(self, attr)) for attr, name in ENV.items()}
        env[ENV["security_group_ids"]] = ",".join(self.security_group_ids)
        env[ENV["subnet_ids"]] = ",".join(self.subnet_ids)
        env[ENV["rollback_alarm_names"]] = json.dumps(list(self.rollback_alarm_names))
        env.update({n: str(getattr(self.blue_green, a)) for a, n in BLUE_GREEN_ENV.items()})
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DeploySettings:
        """Return the settings of an environment.

        Raises:
            ConfigError: a variable is missing (all are named) or invalid (it is named).
        """
        missing = [n for n in (*ENV.values(), *BLUE_GREEN_ENV.values()) if not env.get(n)]
        if missing:
            raise ConfigError(f"model deploy: missing environment variables: {', '.join(missing)}")

        def number(name: str) -> int:
            if not env[name].isdigit():
                raise ConfigError(f"{name}: {env[name]!r} is not a whole number")
            return int(env[name])

        alarms_env, endpoint = ENV["rollback_alarm_names"], env[ENV["endpoint_name"]]
        try:
            alarms = json.loads(env[alarms_env])
        except ValueError as e:
            raise ConfigError(f"{alarms_env}: not JSON ({e})") from e
        if not (isinstance(alarms, list) and len(alarms) <= MAX_ALARMS
                and all(isinstance(a, str) for a in alarms)):  # fmt: skip
            raise ConfigError(f"{alarms_env}: not a JSON list of at most {MAX_ALARMS} names")
        if not NAME_RE.match(endpoint) or len(endpoint) > ENDPOINT_NAME_MAX:
            raise ConfigError(f"{ENV['endpoint_name']}: {endpoint!r} is not a SageMaker name "
                              f"of at most {ENDPOINT_NAME_MAX} characters")  # fmt: skip
        blue_green = BlueGreen(env[BLUE_GREEN_ENV["traffic"]], *(
            number(n) for a, n in BLUE_GREEN_ENV.items() if a != "traffic"))  # fmt: skip
        count = number(ENV["instance_count"])
        if count < 1 or (blue_green.traffic == "CANARY" and count < 2):
            raise ConfigError(f"{ENV['instance_count']}: {count}; CANARY needs 2 or more")
        ids = {a: tuple(i for i in env[ENV[a]].split(",") if i)
               for a in ("security_group_ids", "subnet_ids")}  # fmt: skip
        return cls(
            group=env[ENV["group"]], endpoint_name=endpoint,
            artifacts_bucket=env[ENV["artifacts_bucket"]],
            artifacts_key_arn=env[ENV["artifacts_key_arn"]], kms_key_arn=env[ENV["kms_key_arn"]],
            serving_role_arn=env[ENV["serving_role_arn"]],
            instance_type=env[ENV["instance_type"]], instance_count=count,
            security_group_ids=ids["security_group_ids"], subnet_ids=ids["subnet_ids"],
            rollback_alarm_names=tuple(alarms), blue_green=blue_green,
        )  # fmt: skip


@dataclass(frozen=True)
class Plan:
    """One version's deployment: its names and the artefact digest it was verified at."""

    package_arn: str
    group: str
    version: int
    endpoint_name: str
    model_name: str
    config_name: str
    artifact_sha256: str
    artifact_version_id: str

    def as_dict(self) -> dict[str, Any]:
        """Return the plan as the state machine passes it along."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Plan:
        """Return the plan of :meth:`as_dict`; raise DeployError naming missing fields."""
        missing = [f.name for f in fields(cls) if f.name not in doc]
        if missing:
            raise DeployError(f"deploy plan: missing {', '.join(missing)}")
        return cls(**{f.name: doc[f.name] for f in fields(cls)})


def version_name(endpoint_name: str, version: int) -> str:
    """Return the name of a version's model and endpoint configuration: ``<endpoint>-v<n>``."""
    return f"{endpoint_name}-v{version}"


def _where(version: int) -> str:
    return f"model package version {version}"


def _code(e: ClientError) -> str:
    return str(e.response.get("Error", {}).get("Code", ""))


def _not_found(e: ClientError) -> bool:
    message = str(e.response.get("Error", {}).get("Message", ""))
    return _code(e) == "ValidationException" and "Could not find" in message


def _describe_package(sagemaker: Any, package_arn: str, where: str) -> dict[str, Any]:
    try:
        return dict(sagemaker.describe_model_package(ModelPackageName=package_arn))
    except ClientError as e:
        if _code(e) != "ValidationException":
            raise
        raise DeployError(f"{where}: {e}") from e


def _baseline_uri(package: Mapping[str, Any], where: str) -> str:
    quality = (package.get("ModelMetrics") or {}).get("ModelDataQuality") or {}
    uri = (quality.get("Statistics") or {}).get("S3Uri")
    if not uri:
        raise DeployError(f"{where}: no ModelMetrics.ModelDataQuality.Statistics, so the drift "
                          "monitor would have no baseline; not deployed")  # fmt: skip
    return str(uri)


def verify(sagemaker: Any, s3: Any, package_arn: str, *, settings: DeploySettings) -> Plan:
    """Check that a version may be deployed; return its plan.

    Raises:
        DeployError: not a version of the settings' group, not Approved, rejected by the
            four-eyes check (which sets it to Rejected), no drift baseline metric, no
            recorded ``artifact_sha256``, or an artefact missing or hashing differently.
    """
    try:
        group, version = package_version(package_arn)
    except GovernanceError as e:
        raise DeployError(str(e)) from e
    where = _where(version)
    if group != settings.group:
        raise DeployError(f"{where}: group {group!r} is not deployed here ({settings.group!r})")
    package = _describe_package(sagemaker, package_arn, where)
    if (state := package.get("ModelApprovalStatus")) != APPROVED:
        raise DeployError(f"{where}: status is {state}, not Approved; not deployed")
    decision = review(sagemaker, package_arn)
    if decision.outcome != "kept":
        raise DeployError(f"{where}: the four-eyes check {decision.outcome} it "
                          f"({decision.reason}); not deployed")  # fmt: skip
    _baseline_uri(package, where)
    containers = (package.get("InferenceSpecification") or {}).get("Containers") or [{}]
    uri = containers[0].get("ModelDataUrl")
    expected = (package.get("CustomerMetadataProperties") or {}).get("artifact_sha256")
    if not uri or not expected:
        what = "ModelDataUrl" if not uri else "artifact_sha256"
        raise DeployError(f"{where}: no {what} recorded, so the artefact cannot be shown to be "
                          "the registered one; not deployed")  # fmt: skip
    try:
        digest = artifact_digest(s3, str(uri))
    except GovernanceError as e:
        raise DeployError(f"{where}: {e}") from e
    except ClientError as e:
        if _code(e) not in ("NoSuchKey", "404"):
            raise
        raise DeployError(f"{where}: the registered artefact is gone; not deployed") from e
    if digest["sha256"] != str(expected).lower():
        raise DeployError(f"{where}: the artefact's SHA-256 is not the registered "
                          "artifact_sha256 (changed since registration); not deployed")  # fmt: skip
    name = version_name(settings.endpoint_name, version)
    logger.info("%s verified for endpoint %s", where, settings.endpoint_name)
    return Plan(package_arn=package_arn, group=group, version=version,
                endpoint_name=settings.endpoint_name, model_name=name, config_name=name,
                artifact_sha256=digest["sha256"],
                artifact_version_id=digest["version_id"])  # fmt: skip


def _exists(describe: Any, **name: str) -> bool:
    try:
        describe(**name)
    except ClientError as e:
        if _not_found(e):
            return False
        raise
    return True


def _create(create: Any, what: str, **request: Any) -> None:
    """Create a resource; another delivery having created it first counts as done."""
    try:
        create(**request)
    except ClientError as e:
        if "already exist" not in str(e.response.get("Error", {}).get("Message", "")):
            raise
        return
    logger.info("%s created", what)


def _check(plan: Plan, settings: DeploySettings) -> None:
    if (plan.endpoint_name, plan.group) != (settings.endpoint_name, settings.group):
        raise DeployError(f"{_where(plan.version)}: the plan is for endpoint "
                          f"{plan.endpoint_name!r}, not {settings.endpoint_name!r}")  # fmt: skip


def _action(sagemaker: Any, plan: Plan) -> Action:
    where = _where(plan.version)
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=plan.endpoint_name)
    except ClientError as e:
        if _not_found(e):
            return "create"
        raise
    state, current = endpoint["EndpointStatus"], endpoint.get("EndpointConfigName")
    pending = (endpoint.get("PendingDeploymentSummary") or {}).get("EndpointConfigName")
    if plan.config_name == pending or (state == "Creating" and current == plan.config_name):
        return "current"  # a repeated delivery: the first one's deployment is running
    if state in IN_PROGRESS:
        return "busy"
    if state != "InService":
        reason = endpoint.get("FailureReason") or "no reason given"
        raise DeployError(f"{where}: endpoint {plan.endpoint_name} is {state} ({reason}); "
                          "not deployed")  # fmt: skip
    if current == plan.config_name:
        return "current"
    serving = re.fullmatch(rf"{re.escape(plan.endpoint_name)}-v(\d+)", str(current))
    if serving and int(serving[1]) > plan.version:  # a late repeated delivery, or a rollback
        newer = f"{plan.package_arn.rsplit('/', 1)[0]}/{serving[1]}"
        if _describe_package(sagemaker, newer, where).get("ModelApprovalStatus") == APPROVED:
            raise DeployError(f"{where}: newer version {serving[1]} is approved and serving; "
                              "reject it (oncopipe model rollback); not deployed")  # fmt: skip
    return "update"


def prepare(sagemaker: Any, plan: Plan, settings: DeploySettings) -> dict[str, str]:
    """Create the version's Model and EndpointConfig where missing; return the action.

    Returns ``{"action": a}``: ``create`` (no endpoint yet), ``update`` (it serves another
    version), ``current`` (it serves or is deploying this one) or ``busy`` (it is deploying
    another version: wait and prepare again).

    Raises:
        DeployError: the endpoint is failed or out of service, or a newer approved version
            serves it (a late repeated delivery must not roll it back).
    """
    _check(plan, settings)
    if not _exists(sagemaker.describe_model, ModelName=plan.model_name):
        _create(sagemaker.create_model, f"model {plan.model_name}", ModelName=plan.model_name,
                PrimaryContainer={"ModelPackageName": plan.package_arn,
                                  "Environment": {"ONCOPIPE_MODEL_VARIANT": VARIANT}},
                ExecutionRoleArn=settings.serving_role_arn,
                VpcConfig={"SecurityGroupIds": list(settings.security_group_ids),
                           "Subnets": list(settings.subnet_ids)},
                EnableNetworkIsolation=True)  # fmt: skip
    if not _exists(sagemaker.describe_endpoint_config, EndpointConfigName=plan.config_name):
        capture = f"s3://{settings.artifacts_bucket}/{ARTIFACTS_DATA_CAPTURE}"
        _create(sagemaker.create_endpoint_config, f"endpoint config {plan.config_name}",
                EndpointConfigName=plan.config_name, KmsKeyId=settings.kms_key_arn,
                DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                                   "DestinationS3Uri": capture, "KmsKeyId": settings.kms_key_arn,
                                   "CaptureOptions": [{"CaptureMode": "Input"},
                                                      {"CaptureMode": "Output"}]},
                ProductionVariants=[{"VariantName": VARIANT, "ModelName": plan.model_name,
                                     "InitialInstanceCount": settings.instance_count,
                                     "InstanceType": settings.instance_type,
                                     "InitialVariantWeight": 1.0}])  # fmt: skip
    action = _action(sagemaker, plan)
    logger.info("%s: endpoint action %s", _where(plan.version), action)
    return {"action": action}


def apply(sagemaker: Any, plan: Plan, settings: DeploySettings, action: str) -> None:
    """Create the endpoint, or update it blue/green with auto-rollback; ``current``: nothing.

    Raises:
        DeployError: an action other than create, update or current.
    """
    _check(plan, settings)
    if action == "current":
        return
    if action == "create":
        _create(sagemaker.create_endpoint, f"endpoint {plan.endpoint_name}",
                EndpointName=plan.endpoint_name, EndpointConfigName=plan.config_name)  # fmt: skip
        return
    if action != "update":
        raise DeployError(f"{_where(plan.version)}: unknown endpoint action {action!r}")
    deployment = settings.blue_green.deployment_config(settings.rollback_alarm_names)
    try:
        sagemaker.update_endpoint(EndpointName=plan.endpoint_name,
                                  EndpointConfigName=plan.config_name,
                                  DeploymentConfig=deployment)  # fmt: skip
    except ClientError as e:  # a repeated delivery started this very update a moment ago
        if _code(e) != "ValidationException" or _action(sagemaker, plan) != "current":
            raise
    logger.info("%s: endpoint update started", _where(plan.version))


@dataclass(frozen=True)
class Rollout:
    """Where the endpoint's deployment stands: InService, InProgress or Failed (``reason``)."""

    status: Literal["InService", "InProgress", "Failed"]
    reason: str = ""


def status(sagemaker: Any, endpoint: str, *, config_name: str | None = None) -> Rollout:
    """Return the endpoint's rollout state.

    With ``config_name``, an endpoint in service on another configuration is Failed: the
    update was rolled back (an alarm fired, or the new fleet did not become healthy).
    """
    described = sagemaker.describe_endpoint(EndpointName=endpoint)
    state, reason = described["EndpointStatus"], str(described.get("FailureReason") or "")
    if state in IN_PROGRESS:
        return Rollout("InProgress")
    if state != "InService":
        return Rollout("Failed", reason or f"endpoint {endpoint} is {state}")
    serving = described.get("EndpointConfigName")
    if config_name is None or serving == config_name:
        return Rollout("InService")
    return Rollout("Failed", f"rolled back: endpoint {endpoint} serves {serving}, not "
                   f"{config_name}" + (f" ({reason})" if reason else ""))  # fmt: skip


def publish_baseline(
    sagemaker: Any, s3: Any, plan: Plan, artifacts_bucket: str, *, kms_key_arn: str
) -> str:
    """Write the version's drift baseline to ``baseline_key(version)``; return the key.

    The baseline is the document ``ModelMetrics.ModelDataQuality.Statistics.S3Uri`` names
    (under :data:`BASELINE_PREFIXES` of the artifacts bucket), in the format of
    :func:`oncopipe.monitor.job.baseline_document`, with ``model_package_arn`` set to the
    version. Written with SSE-KMS under ``kms_key_arn``: the same bytes on every call.

    Raises:
        DeployError: no baseline metric, one outside those prefixes of the artifacts bucket,
            or a document that is not a format-1 baseline (or is another package's).
    """
    # imported here: the drift job's module pulls in numpy, which no other step needs
    from oncopipe.monitor.job import baseline_key

    where = _where(plan.version)
    uri = _baseline_uri(_describe_package(sagemaker, plan.package_arn, where), where)
    match = re.fullmatch(r"s3://([^/]+)/(.+)", uri)
    if not match or match[1] != artifacts_bucket or not match[2].startswith(BASELINE_PREFIXES):
        prefixes = " or ".join(BASELINE_PREFIXES)
        raise DeployError(f"{where}: the drift baseline {uri} is not under {prefixes} of "
                          f"s3://{artifacts_bucket}")  # fmt: skip
    body = s3.get_object(Bucket=artifacts_bucket, Key=match[2])["Body"].read()
    try:
        document = json.loads(body)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DeployError(f"{where}: the drift baseline {uri} is not JSON ({e})") from e
    if not (isinstance(document, dict) and document.get("format") == 1
            and isinstance(document.get("monitors"), dict)):  # fmt: skip
        raise DeployError(f"{where}: {uri} is not a drift baseline (format 1, monitors)")
    if document.get("model_package_arn") not in ("", None, plan.package_arn):
        raise DeployError(f"{where}: the drift baseline {uri} names another model package")
    document["model_package_arn"] = plan.package_arn
    key = baseline_key(plan.version)
    s3.put_object(Bucket=artifacts_bucket, Key=key, ContentType="application/json",
                  Body=json.dumps(document, indent=2, sort_keys=True).encode("utf-8"),
                  ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key_arn)  # fmt: skip
    logger.info("%s: drift baseline published", where)
    return key
