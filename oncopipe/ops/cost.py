"""Cost per sample: an estimate at the end of every job, and the actual from Cost Explorer.

Estimate. A job reserves ``vcpus`` and ``memory_gib`` for ``seconds`` on an instance type
(a Batch host such as ``m6i.2xlarge``, or a SageMaker ML instance ``ml.m5.xlarge``) that ran
``on-demand`` or ``spot``. :func:`estimate` charges the vCPU-seconds and GiB-seconds at rates
derived from the instance's hourly price in ``prices.csv`` (checked in beside this module,
with its sources and date): the price is split into a per-vCPU and a per-GiB rate in the
AWS Fargate ratio (:data:`FARGATE_GIB_HOURS_PER_VCPU_HOUR`), so a job that reserves the
whole instance costs exactly the instance's price and a 2-vCPU job on an 8-vCPU host a
share of it. The lifecycle is the one the job actually ran on: a Batch job asks the
instance metadata service (:func:`instance_lifecycle`, IMDSv2); a SageMaker job knows from
its configuration (:func:`sagemaker_lifecycle`, :func:`training_job_cost_fields`). Unknown
lifecycle is charged at the on-demand rate (an upper bound) and recorded as ``unknown``.

What goes into the item's manifest summary is :func:`job_cost_fields`; the metric is
:func:`cost_metric` (CloudWatch, namespace :data:`METRIC_NAMESPACE`).

Actual. Batch and SageMaker jobs carry the cost-allocation tags :data:`TAG_RUN_ID`,
:data:`TAG_STAGE` and :data:`TAG_SAMPLE` (the pseudonymous sample key, never a source id:
:func:`sample_key`). :mod:`oncopipe.ops.cost_report` reads Cost Explorer ``GetCostAndUsage``
grouped by stage and sample for one run and puts it beside the manifests' estimates.

Limits of the actual. Cost Explorer attributes usage to the tags of the billed resource.
SageMaker training and processing jobs are billed resources, so their tags work as is. A
Batch job on EC2 runs on shared instances billed by the instance: its tags (propagated to
the ECS task) reach the bill only through AWS split cost allocation data for ECS/Batch,
an opt-in of the Billing preferences; without it the Batch rows of the actual stay empty
(the estimate is what there is for them). ``cost_report.estimates_from_manifests`` keys on the
manifest's ``step``, so the stage tag must be the step name (``align``, ``call``...).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from oncopipe.errors import ConfigError
from oncopipe.pseudonym import is_object_ref, is_patient_key, object_ref

logger = logging.getLogger(__name__)

PRICES_CSV = Path(__file__).resolve().parent / "prices.csv"

#: Cost-allocation tags of Batch and SageMaker jobs (activate them in the Billing console or
#: with ``ce:UpdateCostAllocationTagsStatus``; Cost Explorer shows them up to 24 h later).
TAG_RUN_ID = "oncopipe:run-id"
TAG_STAGE = "oncopipe:stage"
TAG_SAMPLE = "oncopipe:sample"
COST_ALLOCATION_TAGS = (TAG_RUN_ID, TAG_STAGE, TAG_SAMPLE)

#: CloudWatch namespace and metric names of the operations metrics.
METRIC_NAMESPACE = "oncopipe"
METRIC_COST = "CostEstimateUSD"

ON_DEMAND = "on-demand"
SPOT = "spot"
UNKNOWN = "unknown"
LIFECYCLES = (ON_DEMAND, SPOT)

#: AWS Fargate Linux/x86 us-east-1: USD 0.04048 per vCPU-hour, USD 0.004445 per GB-hour
#: (https://aws.amazon.com/fargate/pricing/). Their ratio splits an instance price.
FARGATE_USD_PER_VCPU_HOUR = 0.04048
FARGATE_USD_PER_GIB_HOUR = 0.004445
FARGATE_GIB_HOURS_PER_VCPU_HOUR = FARGATE_USD_PER_VCPU_HOUR / FARGATE_USD_PER_GIB_HOUR

#: Cost Explorer is served from us-east-1 whatever the workload's region.
COST_EXPLORER_REGION = "us-east-1"
COST_METRIC = "UnblendedCost"

#: Instance metadata (IMDSv2): a token first, then the item.
IMDS_URL = "http://169.254.169.254/latest"
IMDS_TIMEOUT_S = 1.0

#: Environment of a job's adapter (set by the stacks in the job definition / job config).
ENV_JOB_VCPUS = "ONCOPIPE_JOB_VCPUS"
ENV_JOB_MEMORY_MIB = "ONCOPIPE_JOB_MEMORY_MIB"
ENV_SM_MANAGED_SPOT = "ONCOPIPE_SM_MANAGED_SPOT"
ENV_SM_INSTANCE_TYPE = "ONCOPIPE_SM_INSTANCE_TYPE"


class PriceNotFoundError(ConfigError):
    """No row of the price table for a region, instance type and lifecycle."""


@dataclass(frozen=True)
class Price:
    """One row of ``prices.csv`` with the per-vCPU and per-GiB rates derived from it."""

    region: str
    instance_type: str
    lifecycle: str
    usd_per_hour: float
    vcpus: int
    memory_gib: float
    as_of: str

    @property
    def usd_per_vcpu_hour(self) -> float:
        """Return the vCPU share of the hourly price (Fargate ratio, module docstring)."""
        return self.usd_per_hour / (self.vcpus + self.memory_gib / FARGATE_GIB_HOURS_PER_VCPU_HOUR)

    @property
    def usd_per_gib_hour(self) -> float:
        """Return the GiB share of the hourly price."""
        return self.usd_per_vcpu_hour / FARGATE_GIB_HOURS_PER_VCPU_HOUR


@dataclass(frozen=True)
class PriceTable:
    """The price table, keyed by (region, instance type, lifecycle)."""

    prices: Mapping[tuple[str, str, str], Price]

    def lookup(self, region: str, instance_type: str, lifecycle: str) -> Price:
        """Return the price of an instance type in a region for a lifecycle.

        ``instance_family_or_type`` may be a family (``m6i``): its smallest listed size is
        used (rates per vCPU and GiB are nearly flat within a family).

        Raises:
            PriceNotFoundError: no such row; the message names the file to extend.
        """
        exact = self.prices.get((region, instance_type, lifecycle))
        if exact is not None:
            return exact
        family = [
            p
            for (r, t, lc), p in self.prices.items()
            if r == region and lc == lifecycle and t.rsplit(".", 1)[0] == instance_type
        ]
        if family:
            return min(family, key=lambda p: p.vcpus)
        raise PriceNotFoundError(
            f"no {lifecycle} price for {instance_type} in {region} in {PRICES_CSV.name}; add a "
            "row (region,instance_type,lifecycle,usd_per_hour,vcpus,memory_gib,as_of)"
        )


def load_prices(path: Path | None = None) -> PriceTable:
    """Return the price table of a CSV file (default: the checked-in ``prices.csv``).

    Lines starting with ``#`` are the header comment (sources, date, method).

    Raises:
        ConfigError: a row is malformed (the message names the line) or a lifecycle is not
            one of on-demand, spot.
    """
    path = path or PRICES_CSV
    lines = [line for line in path.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip
    prices: dict[tuple[str, str, str], Price] = {}
    for n, row in enumerate(csv.DictReader(lines), start=2):
        try:
            price = Price(
                region=row["region"].strip(),
                instance_type=row["instance_type"].strip(),
                lifecycle=row["lifecycle"].strip(),
                usd_per_hour=float(row["usd_per_hour"]),
                vcpus=int(row["vcpus"]),
                memory_gib=float(row["memory_gib"]),
                as_of=date.fromisoformat(row["as_of"].strip()).isoformat(),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise ConfigError(f"{path.name}: data row {n - 1} is malformed ({e})") from e
        if price.lifecycle not in LIFECYCLES:
            raise ConfigError(f"{path.name}: data row {n - 1}: lifecycle {price.lifecycle!r} "
                              f"is not one of {', '.join(LIFECYCLES)}")  # fmt: skip
        if price.usd_per_hour < 0 or price.vcpus <= 0 or price.memory_gib <= 0:
            raise ConfigError(f"{path.name}: data row {n - 1}: price, vcpus and memory must "
                              "be positive")  # fmt: skip
        prices[(price.region, price.instance_type, price.lifecycle)] = price
    return PriceTable(prices)


@lru_cache(maxsize=1)
def default_prices() -> PriceTable:
    """Return the checked-in price table (parsed once)."""
    return load_prices()


@dataclass(frozen=True)
class CostEstimate:
    """The estimated cost of one job."""

    usd: float
    vcpu_seconds: float
    gib_seconds: float
    lifecycle: str  # on-demand, spot or unknown (charged on-demand)
    priced_as: str  # the lifecycle of the price row used
    instance_type: str
    region: str
    price_as_of: str


def estimate(
    vcpus: float,
    memory_gib: float,
    seconds: float,
    *,
    region: str,
    instance_family_or_type: str,
    lifecycle: str,
    prices: PriceTable | None = None,
) -> CostEstimate:
    """Return the estimated cost of a job that reserved ``vcpus`` and ``memory_gib``.

    ``lifecycle`` is ``on-demand``, ``spot`` or anything else (``unknown``), which is
    priced on-demand.

    Raises:
        ValueError: a negative or non-finite quantity.
        PriceNotFoundError: the table has no row for the instance.
    """
    for name, value in (("vcpus", vcpus), ("memory_gib", memory_gib), ("seconds", seconds)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
    table = prices or default_prices()
    known = lifecycle if lifecycle in LIFECYCLES else UNKNOWN
    priced_as = known if known != UNKNOWN else ON_DEMAND
    price = table.lookup(region, instance_family_or_type, priced_as)
    vcpu_s, gib_s = vcpus * seconds, memory_gib * seconds
    usd = (vcpu_s * price.usd_per_vcpu_hour + gib_s * price.usd_per_gib_hour) / 3600.0
    return CostEstimate(usd=usd, vcpu_seconds=vcpu_s, gib_seconds=gib_s, lifecycle=known,
                        priced_as=priced_as, instance_type=price.instance_type, region=region,
                        price_as_of=price.as_of)  # fmt: skip


# -- pseudonymous sample key and tags ------------------------------------------------------
def sample_key(secret: bytes, sample_id: str) -> str:
    """Return the pseudonymous key of a sample (the value of :data:`TAG_SAMPLE`).

    Sample ids come from the sample sheet and can embed a patient's id, so a tag (which
    billing exports show to whoever reads the bill) carries ``object_ref(secret,
    "sample:" + id)`` instead.

    Raises:
        ValueError: an empty id or a short secret (the message never names the id).
    """
    return object_ref(secret, "sample:" + sample_id)


def cost_tags(run_id: str, stage: str, sample: str | None = None) -> dict[str, str]:
    """Return the cost-allocation tags of a job (Batch ``tags``, SageMaker ``Tags``).

    Raises:
        ValueError: ``sample`` is not a pseudonymous key (a patient key ``pk-...`` or a
            sample/object reference ``obj-...``); the message does not repeat the value.
    """
    tags = {TAG_RUN_ID: run_id, TAG_STAGE: stage}
    if sample is not None:
        tags[TAG_SAMPLE] = _pseudonymous(sample)
    return tags


def _pseudonymous(sample: str) -> str:
    if not (is_patient_key(sample) or is_object_ref(sample)):
        raise ValueError(f"{TAG_SAMPLE} must be a pseudonymous key (pk-... or obj-...), "
                         "never a source id")  # fmt: skip
    return sample


# -- the lifecycle a job ran on ------------------------------------------------------------
#: ``fetch(method, url, headers, timeout) -> body``; raises OSError on failure.
Fetcher = Callable[[str, str, Mapping[str, str], float], str]


def _urllib_fetch(method: str, url: str, headers: Mapping[str, str], timeout: float) -> str:
    request = urllib.request.Request(url, method=method, headers=dict(headers))  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - fixed IMDS URL
        body: bytes = response.read()
    return body.decode("ascii", "replace").strip()


def instance_metadata(
    paths: Sequence[str],
    *,
    fetch: Fetcher | None = None,
    timeout: float = IMDS_TIMEOUT_S,
) -> dict[str, str | None]:
    """Return IMDSv2 metadata items (``instance-life-cycle``, ``instance-type``...).

    A token first (``PUT /api/token``), then each item with it. Off EC2, in a container
    whose hop limit stops the token, or on any error, the items are None: a job's cost
    estimate must never fail the job.
    """
    fetch = fetch or _urllib_fetch
    try:
        token = fetch("PUT", f"{IMDS_URL}/api/token",
                      {"X-aws-ec2-metadata-token-ttl-seconds": "60"}, timeout)  # fmt: skip
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        logger.info("instance metadata not reachable (%s): lifecycle unknown", type(e).__name__)
        return dict.fromkeys(paths)
    found: dict[str, str | None] = {}
    for path in paths:
        try:
            found[path] = fetch("GET", f"{IMDS_URL}/meta-data/{path}",
                                {"X-aws-ec2-metadata-token": token}, timeout) or None  # fmt: skip
        except (OSError, ValueError):
            found[path] = None
    return found


def instance_lifecycle(*, fetch: Fetcher | None = None, timeout: float = IMDS_TIMEOUT_S) -> str:
    """Return the lifecycle of the EC2 instance this runs on: on-demand, spot or unknown.

    IMDS answers ``spot``, ``on-demand`` or ``scheduled`` (priced on-demand as unknown).
    """
    value = instance_metadata(["instance-life-cycle"], fetch=fetch, timeout=timeout)[
        "instance-life-cycle"
    ]
    return value if value in LIFECYCLES else UNKNOWN


def sagemaker_lifecycle(environ: Mapping[str, str] | None = None) -> str:
    """Return the lifecycle of a SageMaker job from its environment.

    SageMaker does not tell a container whether managed spot is on; the pipeline sets
    :data:`ENV_SM_MANAGED_SPOT` (``true``/``false``) from the same configuration that sets
    ``EnableManagedSpotTraining``. Processing jobs have no spot: on-demand.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_SM_MANAGED_SPOT, "").strip().lower()
    if value in ("1", "true", "yes"):
        return SPOT
    if value in ("0", "false", "no"):
        return ON_DEMAND
    return UNKNOWN


def processing_instance(config_path: Path = Path("/opt/ml/config/processingjobconfig.json"),
                        ) -> tuple[str, int] | None:  # fmt: skip
    """Return (instance type, count) of the SageMaker Processing job this runs in, or None.

    Read from the job configuration SageMaker mounts in the container.
    """
    try:
        cluster = json.loads(config_path.read_text(encoding="utf-8"))["ProcessingResources"][
            "ClusterConfig"
        ]
        return str(cluster["InstanceType"]), int(cluster.get("InstanceCount", 1))
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- what goes into the manifest -----------------------------------------------------------
def job_cost_fields(
    vcpus: float,
    memory_gib: float,
    seconds: float,
    *,
    region: str,
    instance_type: str | None,
    lifecycle: str,
    sample: str | None = None,
    prices: PriceTable | None = None,
) -> dict[str, Any]:
    """Return the cost fields of an item's manifest summary.

    Keys: ``cost_usd_estimate`` (rounded to 1e-6 USD), ``vcpu_seconds``, ``gib_seconds``,
    ``lifecycle``, ``price_as_of``, ``instance_type``, ``region`` and, given one,
    ``cost_sample`` (the value of the sample tag, to join with Cost Explorer). Without an
    instance type or a price row the estimate is None and ``cost_note`` says why: the
    job's result never depends on its cost estimate.

    Raises:
        ValueError: negative quantities, or ``sample`` not a pseudonymous key.
    """
    fields: dict[str, Any] = {
        "vcpu_seconds": round(vcpus * seconds, 3),
        "gib_seconds": round(memory_gib * seconds, 3),
        "lifecycle": lifecycle if lifecycle in LIFECYCLES else UNKNOWN,
        "instance_type": instance_type,
        "region": region,
        "cost_usd_estimate": None,
        "price_as_of": None,
    }
    if sample is not None:
        fields["cost_sample"] = _pseudonymous(sample)
    if not instance_type:
        fields["cost_note"] = "instance type unknown"
        return fields
    try:
        found = estimate(vcpus, memory_gib, seconds, region=region,
                         instance_family_or_type=instance_type, lifecycle=lifecycle,
                         prices=prices)  # fmt: skip
    except PriceNotFoundError as e:
        fields["cost_note"] = str(e)
        return fields
    # significant digits, not decimals: a one-second item costs millionths of a dollar,
    # which a fixed 6 decimals would record as 0
    fields["cost_usd_estimate"] = float(f"{found.usd:.6g}")
    fields["price_as_of"] = found.price_as_of
    if found.lifecycle == UNKNOWN:
        fields["cost_note"] = "lifecycle unknown: priced on-demand (upper bound)"
    return fields


# -- a job's reservation, once per job; every item's estimate is made from it ----------------
#: Environment of the running job that carries its :class:`JobProfile` (JSON). Set by the
#: adapter (:func:`metering`), never by a stack: :func:`oncopipe.manifest.process_item`
#: reads it to put a ``cost`` field in each manifest it writes, and child processes
#: (radiomics workers) inherit it.
ENV_COST_PROFILE = "ONCOPIPE_COST_PROFILE"
#: Fallbacks when IMDS does not answer (a container whose hop limit stops the token): the
#: stack sets them where a job queue has one kind of compute environment.
ENV_JOB_LIFECYCLE = "ONCOPIPE_JOB_LIFECYCLE"
ENV_JOB_INSTANCE_TYPE = "ONCOPIPE_JOB_INSTANCE_TYPE"
#: Where SageMaker mounts a training job's resource configuration.
TRAINING_RESOURCE_CONFIG = Path("/opt/ml/input/config/resourceconfig.json")
PROCESSING_JOB_CONFIG = Path("/opt/ml/config/processingjobconfig.json")


@dataclass(frozen=True)
class JobProfile:
    """What a job reserved, on what, since when: the basis of its cost estimates.

    ``lifecycle`` is what the job ran on (recorded); ``priced_as`` the lifecycle of the
    price row used (SageMaker managed spot is priced on-demand: it is billed as fewer
    seconds at the on-demand rate, which the container cannot know, so the estimate is
    an upper bound there). ``concurrency``: items processed at the same time (radiomics
    workers); an item is charged its seconds times the reservation divided by it.
    ``whole_job``: the job commits one item (a sample's alignment, a cohort build), which
    is then charged from the job's start (reference download and set-up included).
    ``sample``: the pseudonymous sample key of a one-sample job (the cost-allocation tag).
    """

    vcpus: float
    memory_gib: float
    instance_type: str | None
    lifecycle: str
    region: str
    priced_as: str = ON_DEMAND
    concurrency: int = 1
    whole_job: bool = False
    started: float = 0.0  # time.time() at the job's start
    sample: str | None = None

    def __post_init__(self) -> None:
        if self.sample is not None:
            _pseudonymous(self.sample)
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")

    def fields(self, seconds: float, *, prices: PriceTable | None = None) -> dict[str, Any]:
        """Return the cost fields (:func:`job_cost_fields`) of ``seconds`` of one item."""
        share = 1.0 / self.concurrency
        fields = job_cost_fields(self.vcpus * share, self.memory_gib * share, max(seconds, 0.0),
                                 region=self.region, instance_type=self.instance_type,
                                 lifecycle=self.priced_as, sample=self.sample,
                                 prices=prices)  # fmt: skip
        fields["lifecycle"] = self.lifecycle if self.lifecycle in LIFECYCLES else UNKNOWN
        if fields["lifecycle"] == UNKNOWN and fields["cost_usd_estimate"] is not None:
            fields["cost_note"] = "lifecycle unknown: priced on-demand (upper bound)"
        if self.priced_as != self.lifecycle and fields["lifecycle"] == SPOT:
            fields["cost_note"] = (
                "managed spot: priced at the on-demand rate (upper bound); "
                "DescribeTrainingJob BillableTimeInSeconds has the discount"
            )
        fields["seconds"] = round(max(seconds, 0.0), 3)
        return fields

    def job_fields(self, now: float | None = None,
                   *, prices: PriceTable | None = None) -> dict[str, Any]:  # fmt: skip
        """Return the cost fields of the whole job so far (its whole reservation)."""
        elapsed = (time.time() if now is None else now) - self.started
        whole = JobProfile(**{**self.to_dict(), "concurrency": 1})
        return whole.fields(elapsed, prices=prices)

    def item_fields(self, item_seconds: float, *, now: float | None = None,
                    prices: PriceTable | None = None) -> dict[str, Any]:  # fmt: skip
        """Return the cost fields an item's manifest records (see ``whole_job``)."""
        if self.whole_job:
            return self.job_fields(now, prices=prices)
        return self.fields(item_seconds, prices=prices)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> JobProfile:
        """Return the profile of :meth:`to_json`'s text.

        Raises:
            ValueError: not a profile (bad JSON, unknown or missing fields).
        """
        try:
            return cls(**json.loads(text))
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{ENV_COST_PROFILE} is not a job profile ({e})") from e


def _region(environ: Mapping[str, str], found: str | None = None) -> str:
    return found or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or UNKNOWN


def batch_job_profile(
    *,
    environ: Mapping[str, str] | None = None,
    fetch: Fetcher | None = None,
    whole_job: bool = False,
    sample: str | None = None,
    started: float | None = None,
) -> JobProfile:
    """Return the profile of the Batch job this runs in.

    The reservation comes from :data:`ENV_JOB_VCPUS` / :data:`ENV_JOB_MEMORY_MIB` (the job
    definition's values, set by the stack); the instance type, lifecycle and region from
    IMDS, else :data:`ENV_JOB_INSTANCE_TYPE` / :data:`ENV_JOB_LIFECYCLE` / ``AWS_REGION``.
    Without a reservation (the local mode) IMDS is not asked and the estimate is None.

    Raises:
        ConfigError: the reservation variables are not numbers.
    """
    environ = os.environ if environ is None else environ
    try:
        vcpus = float(environ.get(ENV_JOB_VCPUS, "0") or 0)
        memory_gib = float(environ.get(ENV_JOB_MEMORY_MIB, "0") or 0) / 1024.0
    except ValueError as e:
        raise ConfigError(f"{ENV_JOB_VCPUS} and {ENV_JOB_MEMORY_MIB} must be numbers") from e
    meta: dict[str, str | None] = dict.fromkeys(
        ("instance-life-cycle", "instance-type", "placement/region")
    )
    if vcpus > 0 or memory_gib > 0:
        meta = instance_metadata(list(meta), fetch=fetch)
    lifecycle = meta["instance-life-cycle"] or environ.get(ENV_JOB_LIFECYCLE) or UNKNOWN
    lifecycle = lifecycle if lifecycle in LIFECYCLES else UNKNOWN
    return JobProfile(
        vcpus=vcpus, memory_gib=memory_gib,
        instance_type=meta["instance-type"] or environ.get(ENV_JOB_INSTANCE_TYPE) or None,
        lifecycle=lifecycle, priced_as=lifecycle if lifecycle != UNKNOWN else ON_DEMAND,
        region=_region(environ, meta["placement/region"]), whole_job=whole_job, sample=sample,
        started=time.time() if started is None else started,
    )  # fmt: skip


def _whole_instances(instance_type: str | None, count: int, lifecycle: str, region: str,
                     **extra: Any) -> JobProfile:  # fmt: skip
    vcpus, memory = 0.0, 0.0
    if instance_type:
        try:  # SageMaker jobs reserve whole instances
            row = default_prices().lookup(region, instance_type, ON_DEMAND)
            vcpus, memory = float(row.vcpus * count), row.memory_gib * count
        except PriceNotFoundError:
            pass  # job_cost_fields says so in cost_note
    extra.setdefault("started", time.time())
    return JobProfile(vcpus=vcpus, memory_gib=memory, instance_type=instance_type,
                      lifecycle=lifecycle, priced_as=ON_DEMAND, region=region,
                      **extra)  # fmt: skip


def processing_job_profile(
    *,
    config_path: Path = PROCESSING_JOB_CONFIG,
    environ: Mapping[str, str] | None = None,
    concurrency: int = 1,
    whole_job: bool = False,
    started: float | None = None,
) -> JobProfile:
    """Return the profile of the SageMaker Processing job this runs in (on-demand: Processing
    has no spot), from the job configuration SageMaker mounts; outside SageMaker the
    instance is unknown and the estimate None."""
    environ = os.environ if environ is None else environ
    found = processing_instance(config_path)
    instance_type, count = found if found else (None, 1)
    return _whole_instances(instance_type, count, ON_DEMAND, _region(environ),
                            concurrency=concurrency, whole_job=whole_job,
                            **({} if started is None else {"started": started}))  # fmt: skip


def training_job_profile(
    *,
    config_path: Path = TRAINING_RESOURCE_CONFIG,
    environ: Mapping[str, str] | None = None,
    started: float | None = None,
) -> JobProfile:
    """Return the profile of the SageMaker training job this runs in.

    Instance type and count from ``resourceconfig.json`` (``current_instance_type``,
    ``hosts``), else ``SM_CURRENT_INSTANCE_TYPE`` / :data:`ENV_SM_INSTANCE_TYPE`; the
    lifecycle from :func:`sagemaker_lifecycle` (the pipeline's managed-spot variable).
    """
    environ = os.environ if environ is None else environ
    instance_type: str | None = None
    count = 1
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        instance_type = str(config["current_instance_type"])
        count = max(len(config.get("hosts") or [None]), 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    instance_type = (instance_type or environ.get("SM_CURRENT_INSTANCE_TYPE")
                     or environ.get(ENV_SM_INSTANCE_TYPE) or None)  # fmt: skip
    return _whole_instances(instance_type, count, sagemaker_lifecycle(environ), _region(environ),
                            whole_job=True,
                            **({} if started is None else {"started": started}))  # fmt: skip


@contextmanager
def metering(profile: JobProfile) -> Iterator[JobProfile]:
    """Make ``profile`` the running job's (:data:`ENV_COST_PROFILE`) for the block.

    Every manifest :func:`oncopipe.manifest.process_item` writes meanwhile, in this
    process or a child started meanwhile, records the item's estimate (:func:`item_cost`).
    """
    previous = os.environ.get(ENV_COST_PROFILE)
    os.environ[ENV_COST_PROFILE] = profile.to_json()
    try:
        yield profile
    finally:
        if previous is None:
            os.environ.pop(ENV_COST_PROFILE, None)
        else:
            os.environ[ENV_COST_PROFILE] = previous


def item_cost(item_seconds: float,
              environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Return the ``cost`` field of an item's manifest, or None outside a metered job.

    Never raises: a job's result must not depend on its cost estimate (a bad profile is
    logged and recorded as no estimate).
    """
    environ = os.environ if environ is None else environ
    text = environ.get(ENV_COST_PROFILE)
    if not text:
        return None
    try:
        return JobProfile.from_json(text).item_fields(item_seconds)
    except Exception as e:  # noqa: BLE001 - see the docstring
        logger.warning("no cost estimate for the item (%s)", type(e).__name__)
        return None


def batch_job_cost_fields(
    seconds: float,
    *,
    environ: Mapping[str, str] | None = None,
    fetch: Fetcher | None = None,
    sample: str | None = None,
    prices: PriceTable | None = None,
) -> dict[str, Any]:
    """Return the cost fields of a Batch job that ran ``seconds`` (:func:`batch_job_profile`)."""
    profile = batch_job_profile(environ=environ, fetch=fetch, sample=sample)
    fields = profile.fields(seconds, prices=prices)
    fields.pop("seconds", None)
    return fields


def training_job_cost_fields(
    description: Mapping[str, Any],
    *,
    region: str,
    sample: str | None = None,
    prices: PriceTable | None = None,
) -> dict[str, Any]:
    """Return the cost fields of a finished SageMaker training job from ``DescribeTrainingJob``.

    SageMaker bills ``BillableTimeInSeconds`` x ``InstanceCount`` at the ML instance's
    rate; managed spot shows as fewer billable seconds than ``TrainingTimeInSeconds``, so
    the on-demand row is used and the lifecycle is ``spot`` when
    ``EnableManagedSpotTraining`` is set. The whole instance is reserved.
    """
    resources = description.get("ResourceConfig", {})
    instance_type = resources.get("InstanceType")
    count = int(resources.get("InstanceCount", 1))
    billable = float(description.get("BillableTimeInSeconds")
                     or description.get("TrainingTimeInSeconds") or 0.0)  # fmt: skip
    table = prices or default_prices()
    lifecycle = SPOT if description.get("EnableManagedSpotTraining") else ON_DEMAND
    if not instance_type:
        return job_cost_fields(0, 0, billable, region=region, instance_type=None,
                               lifecycle=lifecycle, sample=sample, prices=table)  # fmt: skip
    try:
        row = table.lookup(region, str(instance_type), ON_DEMAND)
    except PriceNotFoundError:
        return job_cost_fields(0, 0, billable, region=region, instance_type=str(instance_type),
                               lifecycle=lifecycle, sample=sample, prices=table)  # fmt: skip
    fields = job_cost_fields(row.vcpus * count, row.memory_gib * count, billable, region=region,
                             instance_type=str(instance_type), lifecycle=ON_DEMAND,
                             sample=sample, prices=table)  # fmt: skip
    fields["lifecycle"] = lifecycle
    fields["billable_seconds"] = billable
    if description.get("TrainingTimeInSeconds"):
        fields["training_seconds"] = float(description["TrainingTimeInSeconds"])
    return fields


def cost_metric(fields: Mapping[str, Any], *, stage: str) -> dict[str, Any] | None:
    """Return the CloudWatch datum of a job's estimate (None without an estimate).

    Dimensions are the stage and lifecycle only: a run or sample dimension would make a
    billed custom metric per run.
    """
    if fields.get("cost_usd_estimate") is None:
        return None
    return {
        "MetricName": METRIC_COST,
        "Dimensions": [{"Name": "Stage", "Value": stage},
                       {"Name": "Lifecycle", "Value": str(fields.get("lifecycle", UNKNOWN))}],
        "Value": float(fields["cost_usd_estimate"]),
        "Unit": "None",
    }  # fmt: skip


def put_metrics(cloudwatch: Any, data: Iterable[Mapping[str, Any] | None],
                namespace: str = METRIC_NAMESPACE) -> int:  # fmt: skip
    """Publish metric data (``PutMetricData``, 1000 per call); return how many were sent."""
    batch = [dict(d) for d in data if d is not None]
    for start in range(0, len(batch), 1000):
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=batch[start : start + 1000])
    return len(batch)
