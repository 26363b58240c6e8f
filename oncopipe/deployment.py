"""Deployment configuration: ``cdk.json`` context -> one frozen, validated dataclass.

Pure Python (no ``aws_cdk``): the stacks and the local mode read the same file through it,
so local bucket names and cloud settings come from one place.

The context key ``oncopipe:environments`` holds one object per environment; ``-c env=NAME``
selects one (default ``oncopipe:default-env``). Every key is required, unknown keys are
refused, and each error names the environment, the key and what is allowed, so a typo
fails synth instead of deploying a default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from oncopipe.imaging.options import PROFILE_OPTIONS

ENVIRONMENTS_KEY = "oncopipe:environments"
DEFAULT_ENV_KEY = "oncopipe:default-env"

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)  # fmt: skip
_PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{1,20}$")
_ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,64}$")


class ConfigurationError(ValueError):
    """The cdk.json configuration is invalid; the message says where and how to fix it."""


#: The app's stacks, in deployment order: ``Oncopipe-<env>-<kind>`` (see :func:`stack_names`).
STACK_KINDS = ("DataLake", "Network", "Genomics", "Ingest", "Features", "Model", "Monitor", "Ops")


@dataclass(frozen=True)
class DriftAllowEntry:
    """Known CloudFormation drift to report as "allowed" (not failing ``ops drift``).

    Each field is a glob (:func:`fnmatch.fnmatchcase`: ``*`` also matches ``/``) matched
    against the stack name, the resource's logical ID and the property path of a drift
    (``""`` for a deleted resource, so ``*`` matches deletions too).
    """

    stack: str
    logical_id: str
    property_path: str
    #: Why this drift is expected (shown in the report next to each allowed drift).
    reason: str

    def as_dict(self) -> dict[str, str]:
        """Return the entry as the JSON object that :func:`parse_drift_allow_list` reads."""
        return {
            "stack": self.stack,
            "logical_id": self.logical_id,
            "property_path": self.property_path,
            "reason": self.reason,
        }


# --- Sections: one object per capability, each a frozen dataclass whose fields carry their
# bounds (``metadata``), parsed by one function, so a new key is one field and one line in
# cdk.json, with its error message for free.


def _bounded(low: float, high: float, doc: str) -> Any:
    return field(metadata={"range": (low, high), "doc": doc})


def _described(doc: str) -> Any:
    return field(metadata={"doc": doc})


@dataclass(frozen=True)
class OpsConfig:
    """``ops``: alarms, the dashboard and scheduled CloudFormation drift detection."""

    #: E-mail addresses subscribed to the alarm topic (each confirms by mail).
    alarm_emails: tuple[str, ...] = _described("e-mail addresses subscribed to the alarm topic")
    #: A Batch job RUNNABLE (waiting for capacity) longer than this raises an alarm.
    batch_runnable_alarm_minutes: int = _bounded(5, 10_080, "minutes a Batch job may wait RUNNABLE")
    #: A stage quarantining more than this share of its items in an hour raises an alarm.
    quarantine_alarm_percent: int = _bounded(1, 100, "percent of a stage's items quarantined")
    #: Hours between scheduled drift detections of every stack.
    drift_check_hours: int = _bounded(1, 168, "hours between scheduled drift checks")
    #: Notes are processed on arrival in batches gathered for at most this many seconds.
    notes_batch_seconds: int = _bounded(0, 300, "seconds notes are batched on arrival")
    #: An endpoint variant whose p95 model latency exceeds this (milliseconds) raises an
    #: alarm; SageMaker ends an invocation at 60 s, so a threshold above that never fires.
    endpoint_p95_latency_ms: int = _bounded(10, 60_000, "endpoint p95 latency alarm (ms)")


@dataclass(frozen=True)
class ScatterConfig:
    """``scatter``: whole-genome alignment and calling across many Batch jobs."""

    #: Read pairs per alignment shard (one array-job child each).
    align_pairs_per_shard: int = _bounded(1_000, 1_000_000_000, "read pairs per alignment shard")
    #: A sample whose FASTQ pair is smaller than this aligns as one job (panels, the demo).
    scatter_min_fastq_bytes: int = _bounded(0, 10**14, "FASTQ bytes from which alignment scatters")
    #: Genomic regions variant calling scatters over (balanced by size from the .fai).
    call_regions: int = _bounded(1, 10_000, "regions variant calling scatters over")
    #: A reference shorter than this calls in one job.
    scatter_min_reference_bases: int = _bounded(
        0, 10**12, "reference bases from which calling scatters"
    )
    #: Days the shards and plans under ``genomics/_scatter/`` are kept (a lifecycle rule).
    scratch_expiration_days: int = _bounded(1, 365, "days scatter shards are kept")


@dataclass(frozen=True)
class LifecycleConfig:
    """``lifecycle``: the model pipeline, its governance, drift monitoring and retraining."""

    #: IAM role names (outside the app, e.g. SSO roles) allowed to assume the ModelApprover role.
    approver_role_names: tuple[str, ...] = _described(
        "IAM role names that may assume ModelApprover"
    )
    #: A candidate registers only with validation AUC >= this and >= the approved AUC - tolerance.
    auc_gate: float = _bounded(0.5, 1.0, "the minimum AUC a candidate needs")
    auc_tolerance: float = _bounded(0.0, 0.5, "how far below the approved AUC a candidate may be")
    #: Drift alarm: the distance threshold, M of N daily windows above it, and the fewest
    #: samples a window needs to count.
    drift_threshold: float = _bounded(0.0, 10.0, "the drift distance that counts as drifted")
    drift_alarm_windows: int = _bounded(1, 30, "windows above threshold that alarm (M)")
    drift_alarm_of_windows: int = _bounded(1, 30, "windows the alarm looks at (N)")
    drift_min_samples: int = _bounded(1, 100_000, "samples a drift window needs to count")
    #: Retrain gate: hours between retrains of a model family, new samples since the last
    #: training, retrains a calendar month, and the schedule of the calendar retrain.
    retrain_cooldown_hours: int = _bounded(0, 8_760, "hours between two retrains")
    retrain_min_new_samples: int = _bounded(0, 10**7, "new samples a retrain needs")
    retrain_monthly_budget: int = _bounded(0, 1_000, "retrains a calendar month")
    retrain_schedule: str = _described("EventBridge Scheduler expression of the calendar retrain")
    #: The nightly batch transform of the cohort with the serving version's full model
    #: (EventBridge Scheduler, UTC); empty: no schedule (start ``NightlyRescore`` by hand).
    rescore_schedule: str = _described("EventBridge Scheduler expression of the nightly rescore")
    #: Opt-in: publish each patient's model inputs to a SageMaker Feature Store group
    #: (offline store; the online store only with feature_store_online).
    feature_store: bool = _described("publish model inputs to SageMaker Feature Store")
    feature_store_online: bool = _described("also keep the Feature Store online store")


_EMAIL_RE = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[a-z]{2,}$", re.IGNORECASE)
_SCHEDULE_RE = re.compile(r"^(rate\(\d+ (minute|minutes|hour|hours|day|days)\)|cron\([^()]+\))$")


def _parse_section(env: str, key: str, value: Any, kind: type[Any]) -> Any:
    """Return the section ``key`` of environment ``env`` as the frozen dataclass ``kind``.

    Raises:
        ConfigurationError: not an object, a key missing or unknown, or a value of the wrong
            type or out of its field's range.
    """
    where = f"{ENVIRONMENTS_KEY}.{env}.{key}"
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{where}: expected an object with {', '.join(f.name for f in fields(kind))}"
        )
    expected = [f.name for f in fields(kind)]
    missing = [k for k in expected if k not in value]
    unknown = sorted(set(value) - set(expected))
    if missing or unknown:
        parts = [f"missing keys: {', '.join(missing)}"] if missing else []
        parts += (
            [f"unknown keys: {', '.join(unknown)} (allowed: {', '.join(expected)})"]
            if unknown
            else []
        )
        raise ConfigurationError(f"{where}: " + "; ".join(parts))
    parsed: dict[str, Any] = {}
    hints = {f.name: f.type for f in fields(kind)}
    for f in fields(kind):
        item, hint, name = value[f.name], str(hints[f.name]), f"{key}.{f.name}"
        if hint == "bool":
            parsed[f.name] = _expect(env, name, item, bool, "true or false")
        elif hint == "str":
            parsed[f.name] = _expect(env, name, item, str, "a string")
        elif hint in ("int", "float"):
            what = "an integer" if hint == "int" else "a number"
            number = _expect(env, name, item, int if hint == "int" else (int, float), what)
            if isinstance(number, bool):
                raise ConfigurationError(
                    f"{ENVIRONMENTS_KEY}.{env}.{name}: expected {what}, got {item!r}"
                )
            low, high = f.metadata["range"]
            if not low <= number <= high:
                raise ConfigurationError(
                    f"{ENVIRONMENTS_KEY}.{env}.{name}: {number} is outside {low}..{high}"
                )
            parsed[f.name] = int(number) if hint == "int" else float(number)
        elif hint == "tuple[str, ...]":
            items = _expect(env, name, item, list, "a list of strings")
            if not all(isinstance(i, str) for i in items):
                raise ConfigurationError(
                    f"{ENVIRONMENTS_KEY}.{env}.{name}: expected strings, got {item!r}"
                )
            parsed[f.name] = tuple(items)
        else:  # pragma: no cover - a new field type needs a branch here
            raise TypeError(f"{kind.__name__}.{f.name}: no parser for {hint}")
    return kind(**parsed)


def _ops(env: str, value: Any) -> OpsConfig:
    ops: OpsConfig = _parse_section(env, "ops", value, OpsConfig)
    for address in ops.alarm_emails:
        if not _EMAIL_RE.match(address):
            raise ConfigurationError(
                f"{ENVIRONMENTS_KEY}.{env}.ops.alarm_emails: {address!r} is not an e-mail address"
            )
    return ops


def _scatter(env: str, value: Any) -> ScatterConfig:
    result: ScatterConfig = _parse_section(env, "scatter", value, ScatterConfig)
    return result


def _lifecycle(env: str, value: Any) -> LifecycleConfig:
    lifecycle: LifecycleConfig = _parse_section(env, "lifecycle", value, LifecycleConfig)
    where = f"{ENVIRONMENTS_KEY}.{env}.lifecycle"
    _role_names(env, "lifecycle.approver_role_names", list(lifecycle.approver_role_names))
    if lifecycle.drift_alarm_windows > lifecycle.drift_alarm_of_windows:
        raise ConfigurationError(
            f"{where}.drift_alarm_windows ({lifecycle.drift_alarm_windows}) exceeds "
            f"drift_alarm_of_windows ({lifecycle.drift_alarm_of_windows})"
        )
    if not _SCHEDULE_RE.match(lifecycle.retrain_schedule):
        raise ConfigurationError(
            f"{where}.retrain_schedule: {lifecycle.retrain_schedule!r} is not an EventBridge "
            "Scheduler expression such as cron(0 3 ? * MON *) or rate(7 days)"
        )
    if lifecycle.rescore_schedule and not _SCHEDULE_RE.match(lifecycle.rescore_schedule):
        raise ConfigurationError(
            f"{where}.rescore_schedule: {lifecycle.rescore_schedule!r} is not an EventBridge "
            "Scheduler expression such as cron(0 2 * * ? *) (or empty: no schedule)"
        )
    if lifecycle.feature_store_online and not lifecycle.feature_store:
        raise ConfigurationError(f"{where}.feature_store_online needs feature_store")
    return lifecycle


@dataclass(frozen=True)
class EnvConfig:
    """One deployment environment (dev, prod)."""

    name: str
    #: Short lower-case project name, used in resource names of the local mode and tags.
    project: str
    #: Protect the stateful stack from `cdk destroy` / stack deletion.
    termination_protection: bool
    #: IAM role names made Lake Formation administrators (besides the CDK deploy role).
    lake_formation_admin_role_names: tuple[str, ...]
    #: IAM role names of the data administrators (break-glass, audits) who may read the
    #: ingest bucket besides the stage roles that must; its bucket policy denies the rest.
    data_admin_role_names: tuple[str, ...]
    #: Raw FASTQ/BAM move to STANDARD_IA after this many days (S3 needs >= 30).
    raw_data_infrequent_access_days: int
    #: ... and to GLACIER_IR after this many days (must be later than the IA transition).
    raw_data_glacier_days: int
    #: Old object versions are deleted this many days after they stop being current.
    noncurrent_version_expiration_days: int
    #: Retention of every log group the stacks create.
    log_retention_days: int
    #: CIDR of the VPC (private isolated subnets only).
    vpc_cidr: str
    #: Number of availability zones for subnets and interface endpoints.
    max_azs: int
    #: Athena refuses queries that would scan more than this many bytes.
    athena_bytes_scanned_cutoff: int
    #: Set the account-wide Glue Data Catalog encryption (one owner per account/region).
    manage_glue_catalog_encryption: bool
    #: Reserved concurrency of each ingest Lambda function.
    lambda_reserved_concurrency: int
    #: EC2 instance types of the Batch compute environments (spot first, then on-demand).
    batch_instance_types: tuple[str, ...]
    #: Upper bound of vCPUs of each compute environment.
    batch_max_vcpus: int
    #: Encrypted gp3 root/scratch volume of Batch instances (GiB).
    batch_scratch_gb: int
    #: vCPUs and memory (MiB) of the alignment job, and of the variant-calling job.
    align_vcpus: int
    align_memory_mib: int
    call_vcpus: int
    call_memory_mib: int
    #: Attempts of a Batch job whose host was reclaimed (spot); other failures exit.
    batch_spot_retries: int
    #: Timeout of one Batch job (minutes).
    batch_job_timeout_minutes: int
    #: DICOM de-identification options (PS3.15 E.3), name -> on/off.
    deid_options: tuple[tuple[str, bool], ...]
    #: Opt-in: an S3 Object Lambda access point that de-identifies ingest DICOM on read.
    deid_on_read: bool
    #: SageMaker Processing (radiomics, notes): instance type (ml.*), its encrypted
    #: volume (GiB) and the most minutes one job may run.
    processing_instance_type: str
    processing_volume_gb: int
    processing_max_runtime_minutes: int
    #: Clinical notes: the largest note the notes job processes (bytes); a bigger one is
    #: quarantined as ``note-too-large`` (``NOTES_MAX_BYTES`` of the job).
    notes_max_bytes: int
    #: DICOM series settle: seconds without a new instance after which a series is
    #: complete and converted (:mod:`oncopipe.settle`); 0..86400, over SQS's 900 s the
    #: timer re-enqueues itself.
    series_settle_seconds: int
    #: SageMaker training of the multimodal model: instance type, Managed Spot Training
    #: (interrupted jobs resume from checkpoints), run time and spot wait (minutes).
    training_instance_type: str
    training_spot: bool
    training_max_runtime_minutes: int
    training_max_wait_minutes: int
    #: Hyperparameter tuning (when a pipeline execution asks for it): jobs in all, at once.
    tuning_max_jobs: int
    tuning_parallel_jobs: int
    #: Serving: the approved model package to deploy ("" = no endpoint yet), the real-time
    #: endpoint's instance type, the opt-in serverless endpoint (no VPC, no data capture:
    #: SageMaker does not offer them for serverless). The model is served by the training
    #: image (``training/Dockerfile``, ``serve``), so serving runs the torch that trained it.
    serving_model_package_arn: str
    serving_instance_type: str
    serving_serverless: bool
    #: CloudFormation drift reported as "allowed" by ``oncopipe ops drift`` and the
    #: scheduled drift check (known noise; never counted for ``--fail-on`` or the alarm).
    drift_allow_list: tuple[DriftAllowEntry, ...]
    #: Operations (:class:`OpsConfig`), whole-genome scatter (:class:`ScatterConfig`) and
    #: the model lifecycle (:class:`LifecycleConfig`).
    ops: OpsConfig
    scatter: ScatterConfig
    lifecycle: LifecycleConfig

    @property
    def prefix(self) -> str:
        """``<project>-<env>``: construct-ID and stack-name prefix."""
        return f"{self.project}-{self.name}"


def _expect(env: str, key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    # bool is an int in Python; refuse it where a number is wanted.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigurationError(f"{ENVIRONMENTS_KEY}.{env}.{key}: expected {what}, got {value!r}")
    return value


#: Keys an older cdk.json may still have, and why they went.
RETIRED_KEYS = {
    "pytorch_inference_image": "the training image serves the model, with the torch version "
    "that trained it (training/requirements.txt)",
}


def parse_env_config(env: str, raw: Mapping[str, Any]) -> EnvConfig:
    """Return the validated configuration of one environment.

    Raises:
        ConfigurationError: a key is missing, unknown, of the wrong type or out of range.
    """
    expected = [f.name for f in fields(EnvConfig) if f.name != "name"]
    for key, why in RETIRED_KEYS.items():
        if key in raw:
            raise ConfigurationError(f"{ENVIRONMENTS_KEY}.{env}.{key}: no longer used ({why}); "
                                     "remove the key")  # fmt: skip
    missing = [k for k in expected if k not in raw]
    unknown = sorted(set(raw) - set(expected))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown keys: {', '.join(unknown)} (allowed: {', '.join(expected)})")
        raise ConfigurationError(f"{ENVIRONMENTS_KEY}.{env}: " + "; ".join(parts))

    def num(key: str, low: int, high: int) -> int:
        value = _expect(env, key, raw[key], int, "an integer")
        if not low <= value <= high:
            raise ConfigurationError(
                f"{ENVIRONMENTS_KEY}.{env}.{key}: {value} is outside {low}..{high}"
            )
        return int(value)

    project = _expect(env, "project", raw["project"], str, "a string")
    if not _PROJECT_RE.match(project):
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.project: {project!r} must be 2-21 characters of "
            "lower-case letters, digits and '-', starting with a letter"
        )
    admins = _expect(
        env,
        "lake_formation_admin_role_names",
        raw["lake_formation_admin_role_names"],
        list,
        "a list of IAM role names",
    )
    for role in admins:
        if not isinstance(role, str) or not _ROLE_NAME_RE.match(role):
            raise ConfigurationError(
                f"{ENVIRONMENTS_KEY}.{env}.lake_formation_admin_role_names: {role!r} is not "
                "an IAM role name"
            )
    data_admins = _role_names(env, "data_admin_role_names", raw["data_admin_role_names"])
    ia = num("raw_data_infrequent_access_days", 30, 3650)
    glacier = num("raw_data_glacier_days", 31, 36500)
    if glacier <= ia:
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.raw_data_glacier_days ({glacier}) must be later than "
            f"raw_data_infrequent_access_days ({ia})"
        )
    retention = _expect(env, "log_retention_days", raw["log_retention_days"], int, "an integer")
    if retention not in LOG_RETENTION_DAYS:
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.log_retention_days: {retention} is not one of "
            f"{', '.join(map(str, LOG_RETENTION_DAYS))}"
        )
    cidr = _expect(env, "vpc_cidr", raw["vpc_cidr"], str, "a CIDR string such as 10.40.0.0/16")
    try:
        network = ipaddress.ip_network(cidr)
    except ValueError as e:
        raise ConfigurationError(f"{ENVIRONMENTS_KEY}.{env}.vpc_cidr: {e}") from e
    if not 16 <= network.prefixlen <= 24 or not network.is_private:
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.vpc_cidr: {cidr} must be a private range from /16 to /24"
        )
    return EnvConfig(
        name=env,
        project=project,
        termination_protection=_expect(
            env,
            "termination_protection",
            raw["termination_protection"],
            bool,
            "true or false",
        ),
        lake_formation_admin_role_names=tuple(admins),
        data_admin_role_names=data_admins,
        raw_data_infrequent_access_days=ia,
        raw_data_glacier_days=glacier,
        noncurrent_version_expiration_days=num("noncurrent_version_expiration_days", 1, 36500),
        log_retention_days=retention,
        vpc_cidr=cidr,
        max_azs=num("max_azs", 2, 6),
        athena_bytes_scanned_cutoff=num("athena_bytes_scanned_cutoff", 10_000_000, 10**15),
        manage_glue_catalog_encryption=_expect(
            env,
            "manage_glue_catalog_encryption",
            raw["manage_glue_catalog_encryption"],
            bool,
            "true or false",
        ),
        lambda_reserved_concurrency=num("lambda_reserved_concurrency", 1, 1000),
        batch_instance_types=_instance_types(env, raw["batch_instance_types"]),
        batch_max_vcpus=num("batch_max_vcpus", 2, 100_000),
        batch_scratch_gb=num("batch_scratch_gb", 30, 16_000),
        align_vcpus=num("align_vcpus", 1, 192),
        align_memory_mib=num("align_memory_mib", 1024, 1_500_000),
        call_vcpus=num("call_vcpus", 1, 192),
        call_memory_mib=num("call_memory_mib", 512, 1_500_000),
        batch_spot_retries=num("batch_spot_retries", 1, 10),
        batch_job_timeout_minutes=num("batch_job_timeout_minutes", 5, 20_160),
        deid_options=_deid_options(env, raw["deid_options"]),
        deid_on_read=_expect(env, "deid_on_read", raw["deid_on_read"], bool, "true or false"),
        processing_instance_type=_ml_instance_type(
            env, "processing_instance_type", raw["processing_instance_type"]
        ),
        processing_volume_gb=num("processing_volume_gb", 1, 16_384),
        processing_max_runtime_minutes=num("processing_max_runtime_minutes", 5, 7_200),
        notes_max_bytes=num("notes_max_bytes", 1, 100_000_000),
        series_settle_seconds=num("series_settle_seconds", 0, 86_400),
        **_model_settings(env, raw, num),
        drift_allow_list=parse_drift_allow_list(
            raw["drift_allow_list"], where=f"{ENVIRONMENTS_KEY}.{env}.drift_allow_list"
        ),
        ops=_ops(env, raw["ops"]),
        scatter=_scatter(env, raw["scatter"]),
        lifecycle=_lifecycle(env, raw["lifecycle"]),
    )


def stack_names(config: EnvConfig) -> list[str]:
    """Return the names of the app's stacks for one environment, in deployment order."""
    return [f"Oncopipe-{config.name}-{kind}" for kind in STACK_KINDS]


_DRIFT_ALLOW_KEYS = ("stack", "logical_id", "property_path", "reason")


def parse_drift_allow_list(value: Any, *, where: str) -> tuple[DriftAllowEntry, ...]:
    """Return the validated drift allow-list (``where`` names it in error messages).

    Raises:
        ConfigurationError: not a list of objects with exactly the keys stack, logical_id,
            property_path (non-empty glob strings) and reason (a non-empty string).
    """
    if not isinstance(value, list):
        raise ConfigurationError(
            f"{where}: expected a list of objects with {', '.join(_DRIFT_ALLOW_KEYS)}"
        )
    entries = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ConfigurationError(f"{where}[{i}]: expected an object, got {item!r}")
        missing = [k for k in _DRIFT_ALLOW_KEYS if k not in item]
        unknown = sorted(set(item) - set(_DRIFT_ALLOW_KEYS))
        if missing or unknown:
            raise ConfigurationError(
                f"{where}[{i}]: "
                + "; ".join(
                    ([f"missing keys: {', '.join(missing)}"] if missing else [])
                    + ([f"unknown keys: {', '.join(unknown)}"] if unknown else [])
                )
                + f" (allowed: {', '.join(_DRIFT_ALLOW_KEYS)})"
            )
        for key in _DRIFT_ALLOW_KEYS:
            if not isinstance(item[key], str) or not item[key].strip():
                raise ConfigurationError(
                    f"{where}[{i}].{key}: expected a non-empty string, got {item[key]!r}"
                )
        entries.append(DriftAllowEntry(**{k: item[k] for k in _DRIFT_ALLOW_KEYS}))
    return tuple(entries)


def _role_names(env: str, key: str, value: Any) -> tuple[str, ...]:
    """Return a list of IAM role names (not ARNs: the stacks build ARNs in their account).

    Raises:
        ConfigurationError: not a list, or an entry is not a role name.
    """
    names = _expect(env, key, value, list, "a list of IAM role names")
    for role in names:
        if not isinstance(role, str) or not _ROLE_NAME_RE.match(role):
            raise ConfigurationError(
                f"{ENVIRONMENTS_KEY}.{env}.{key}: {role!r} is not an IAM role name "
                "(1-64 of letters, digits and +=,.@_-; give the name, not the ARN)"
            )
    return tuple(names)


_MODEL_PACKAGE_RE = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:model-package/[A-Za-z0-9-]+/\d+$"
)


def _model_settings(env: str, raw: Mapping[str, Any], num: Any) -> dict[str, Any]:
    runtime = num("training_max_runtime_minutes", 5, 40_320)
    wait = num("training_max_wait_minutes", 5, 40_320)
    spot = _expect(env, "training_spot", raw["training_spot"], bool, "true or false")
    if spot and wait < runtime:
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.training_max_wait_minutes ({wait}) must be at least "
            f"training_max_runtime_minutes ({runtime}) with spot training"
        )
    jobs = num("tuning_max_jobs", 1, 500)
    parallel = num("tuning_parallel_jobs", 1, 100)
    if parallel > jobs:
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.tuning_parallel_jobs ({parallel}) exceeds "
            f"tuning_max_jobs ({jobs})"
        )
    package = _expect(env, "serving_model_package_arn", raw["serving_model_package_arn"], str,
                      'a model package ARN or ""')  # fmt: skip
    if package and not _MODEL_PACKAGE_RE.match(package):
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.serving_model_package_arn: {package!r} is not a "
            "versioned model package ARN (arn:aws:sagemaker:REGION:ACCOUNT:model-package/"
            'GROUP/VERSION), or "" for no endpoint'
        )
    return {
        "training_instance_type": _ml_instance_type(
            env, "training_instance_type", raw["training_instance_type"]
        ),
        "training_spot": spot,
        "training_max_runtime_minutes": runtime,
        "training_max_wait_minutes": wait,
        "tuning_max_jobs": jobs,
        "tuning_parallel_jobs": parallel,
        "serving_model_package_arn": package,
        "serving_instance_type": _ml_instance_type(
            env, "serving_instance_type", raw["serving_instance_type"]
        ),
        "serving_serverless": _expect(
            env, "serving_serverless", raw["serving_serverless"], bool, "true or false"
        ),
    }


_ML_INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z][a-z0-9-]*\.[a-z0-9]+$")


def _ml_instance_type(env: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _ML_INSTANCE_TYPE_RE.match(value):
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.{key}: {value!r} is not a SageMaker instance type "
            "(ml.family.size, e.g. ml.m5.xlarge)"
        )
    return value


DEID_OPTION_NAMES = PROFILE_OPTIONS


def _deid_options(env: str, value: Any) -> tuple[tuple[str, bool], ...]:
    where = f"{ENVIRONMENTS_KEY}.{env}.deid_options"
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where}: expected an object of {', '.join(DEID_OPTION_NAMES)}")
    for name, flag in value.items():
        if name not in DEID_OPTION_NAMES:
            raise ConfigurationError(
                f"{where}: unknown option {name!r} (allowed: {', '.join(DEID_OPTION_NAMES)})"
            )
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{where}.{name}: expected true or false, got {flag!r}")
    return tuple(sorted(value.items()))


_INSTANCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")


def _instance_types(env: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigurationError(
            f"{ENVIRONMENTS_KEY}.{env}.batch_instance_types: expected a non-empty list such as "
            '["m6i.2xlarge", "c6i.2xlarge"]'
        )
    for item in value:
        if not isinstance(item, str) or not _INSTANCE_TYPE_RE.match(item):
            raise ConfigurationError(
                f"{ENVIRONMENTS_KEY}.{env}.batch_instance_types: {item!r} is not an EC2 "
                "instance type (family.size)"
            )
    return tuple(value)


def load_config(context: Mapping[str, Any], selected: str | None) -> EnvConfig:
    """Return the configuration of the selected environment from the cdk.json context.

    Raises:
        ConfigurationError: no environments, or the selected one does not exist.
    """
    environments = context.get(ENVIRONMENTS_KEY)
    if not isinstance(environments, Mapping) or not environments:
        raise ConfigurationError(f"cdk.json context has no {ENVIRONMENTS_KEY} object")
    name = selected or context.get(DEFAULT_ENV_KEY)
    if not name:
        raise ConfigurationError(
            f"no environment selected: pass -c env=NAME (one of {', '.join(environments)})"
        )
    if name not in environments:
        raise ConfigurationError(
            f"unknown environment {name!r}: choose one of {', '.join(environments)}"
        )
    return parse_env_config(str(name), environments[name])


def read_cdk_json(path: str | None = None) -> dict[str, Any]:
    """Return the ``context`` object of the repository's cdk.json (found from this file)."""
    import json
    from pathlib import Path

    file = Path(path) if path else Path(__file__).resolve().parent.parent / "cdk.json"
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigurationError(f"{file}: not found") from e
    except json.JSONDecodeError as e:
        raise ConfigurationError(f"{file}: invalid JSON at line {e.lineno}: {e.msg}") from e
    context = document.get("context", {})
    if not isinstance(context, dict):
        raise ConfigurationError(f"{file}: 'context' must be an object")
    return context
