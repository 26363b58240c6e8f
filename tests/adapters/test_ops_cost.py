"""Cost per sample: the estimate's arithmetic, the lifecycle, tags, Cost Explorer."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from oncopipe.errors import ConfigError
from oncopipe.manifest import manifest_key
from oncopipe.ops import cost, cost_report
from oncopipe.ops.cost import (
    TAG_RUN_ID,
    TAG_SAMPLE,
    TAG_STAGE,
    PriceNotFoundError,
    estimate,
    job_cost_fields,
)
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32))
RATIO = 0.04048 / 0.004445  # Fargate GiB-hours per vCPU-hour, as the CSV header states


# -- the price table ------------------------------------------------------------------------
def test_price_table_states_its_sources_date_and_method() -> None:
    text = cost.PRICES_CSV.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    joined = "\n".join(header)
    assert "https://aws.amazon.com/ec2/pricing/on-demand/" in joined
    assert "https://aws.amazon.com/sagemaker-ai/pricing/" in joined
    assert "snapshot" in joined and "9.107" in joined
    table = cost.load_prices()
    assert len(table.prices) >= 20
    assert {p.lifecycle for p in table.prices.values()} == {"on-demand", "spot"}
    for price in table.prices.values():
        date.fromisoformat(price.as_of)
        if price.lifecycle == "spot":  # a spot price below its on-demand price
            od = table.lookup(price.region, price.instance_type, "on-demand")
            assert price.usd_per_hour < od.usd_per_hour


def test_prices_csv_ships_with_the_package() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"oncopipe.ops" = ["*.csv"]' in pyproject


def test_malformed_price_rows_name_the_row(tmp_path: Path) -> None:
    bad = tmp_path / "prices.csv"
    bad.write_text("# comment\nregion,instance_type,lifecycle,usd_per_hour,vcpus,memory_gib,as_of\n"
                   "us-east-1,m6i.large,on-demand,0.096,2,8,2026-01-01\n"
                   "us-east-1,m6i.xlarge,reserved,0.1,4,16,2026-01-01\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"data row 2: lifecycle 'reserved'"):
        cost.load_prices(bad)
    bad.write_text("region,instance_type,lifecycle,usd_per_hour,vcpus,memory_gib,as_of\n"
                   "us-east-1,m6i.large,on-demand,cheap,2,8,2026-01-01\n")  # fmt: skip
    with pytest.raises(ConfigError, match="data row 1 is malformed"):
        cost.load_prices(bad)


# -- the arithmetic --------------------------------------------------------------------------
def test_whole_instance_costs_its_hourly_price() -> None:
    found = estimate(8, 32, 3600, region="us-east-1", instance_family_or_type="m6i.2xlarge",
                     lifecycle="on-demand")  # fmt: skip
    assert found.usd == pytest.approx(0.384)
    assert (found.vcpu_seconds, found.gib_seconds) == (8 * 3600, 32 * 3600)
    assert found.price_as_of == "2026-12-02" and found.lifecycle == "on-demand"


def test_a_share_of_a_host_costs_its_vcpu_and_gib_share() -> None:
    # 4 vCPU + 2 GiB for 30 min on c6i.2xlarge (8 vCPU, 16 GiB, USD 0.34/h)
    found = estimate(4, 2, 1800, region="us-east-1", instance_family_or_type="c6i.2xlarge",
                     lifecycle="on-demand")  # fmt: skip
    expected = 0.34 * (4 + 2 / RATIO) / (8 + 16 / RATIO) * 0.5
    assert found.usd == pytest.approx(expected, rel=1e-9)
    assert found.usd == pytest.approx(0.0735, abs=1e-4)
    # a quarter of m6i.2xlarge (same vCPU:GiB shape) for an hour: a quarter of its price
    quarter = estimate(2, 8, 3600, region="us-east-1", instance_family_or_type="m6i.2xlarge",
                       lifecycle="on-demand")  # fmt: skip
    assert quarter.usd == pytest.approx(0.096)


def test_spot_uses_the_spot_row_and_unknown_is_priced_on_demand() -> None:
    spot = estimate(8, 32, 3600, region="us-east-1", instance_family_or_type="m6i.2xlarge",
                    lifecycle="spot")  # fmt: skip
    assert spot.usd == pytest.approx(0.16) and spot.priced_as == "spot"
    unknown = estimate(8, 32, 3600, region="us-east-1", instance_family_or_type="m6i.2xlarge",
                       lifecycle="scheduled")  # fmt: skip
    assert unknown.lifecycle == "unknown" and unknown.priced_as == "on-demand"
    assert unknown.usd == pytest.approx(0.384)


def test_family_lookup_and_missing_prices() -> None:
    by_family = estimate(2, 4, 3600, region="us-east-1", instance_family_or_type="c6i",
                         lifecycle="on-demand")  # fmt: skip
    assert by_family.instance_type == "c6i.2xlarge"
    with pytest.raises(PriceNotFoundError, match=r"no spot price for x9z\.large in us-east-1"):
        estimate(1, 1, 1, region="us-east-1", instance_family_or_type="x9z.large",
                 lifecycle="spot")  # fmt: skip
    with pytest.raises(ValueError, match="seconds must be a finite number"):
        estimate(1, 1, -5, region="us-east-1", instance_family_or_type="c6i", lifecycle="spot")


def test_job_cost_fields_for_the_manifest() -> None:
    key = cost.sample_key(SECRET, "P001-T")
    fields = job_cost_fields(2, 7000 / 1024, 600, region="us-east-1",
                             instance_type="m6i.2xlarge", lifecycle="spot", sample=key)  # fmt: skip
    assert set(fields) >= {"cost_usd_estimate", "vcpu_seconds", "gib_seconds", "lifecycle",
                           "price_as_of", "cost_sample"}  # fmt: skip
    per_vcpu_h = 0.16 / (8 + 32 / RATIO)
    expected = (1200 * per_vcpu_h + 7000 / 1024 * 600 * per_vcpu_h / RATIO) / 3600
    assert fields["cost_usd_estimate"] == pytest.approx(expected, abs=1e-6)
    assert fields["vcpu_seconds"] == 1200 and fields["lifecycle"] == "spot"
    assert fields["cost_sample"] == key and "P001" not in json.dumps(fields)
    missing = job_cost_fields(2, 4, 60, region="ap-south-2", instance_type="m6i.2xlarge",
                              lifecycle="on-demand")  # fmt: skip
    assert missing["cost_usd_estimate"] is None and "ap-south-2" in missing["cost_note"]
    assert job_cost_fields(2, 4, 60, region="us-east-1", instance_type=None,
                           lifecycle="spot")["cost_note"] == "instance type unknown"  # fmt: skip


def test_cost_metric_has_no_per_run_dimension() -> None:
    fields = job_cost_fields(8, 32, 3600, region="us-east-1", instance_type="m6i.2xlarge",
                             lifecycle="on-demand")  # fmt: skip
    datum = cost.cost_metric(fields, stage="align")
    assert datum is not None and datum["MetricName"] == "CostEstimateUSD"
    assert datum["Value"] == pytest.approx(0.384)
    assert {d["Name"] for d in datum["Dimensions"]} == {"Stage", "Lifecycle"}
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1",
                              aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
    with Stubber(cloudwatch) as stub:
        stub.add_response("put_metric_data", {},
                          {"Namespace": "oncopipe", "MetricData": [datum]})  # fmt: skip
        assert cost.put_metrics(cloudwatch, [datum, None]) == 1
        stub.assert_no_pending_responses()


# -- tags ------------------------------------------------------------------------------------
def test_tags_carry_only_pseudonymous_sample_keys() -> None:
    key = cost.sample_key(SECRET, "P001-T")
    assert key.startswith("obj-") and key == cost.sample_key(SECRET, "P001-T")
    assert cost.cost_tags("r1", "align", key) == {TAG_RUN_ID: "r1", TAG_STAGE: "align",
                                                  TAG_SAMPLE: key}  # fmt: skip
    with pytest.raises(ValueError, match="pseudonymous") as raised:
        cost.cost_tags("r1", "align", "P001-T")
    assert "P001" not in str(raised.value)


# -- the lifecycle ---------------------------------------------------------------------------
class FakeImds:
    """IMDSv2: a PUT for the token, then GETs that must carry it."""

    def __init__(self, items: dict[str, str], *, fail: BaseException | None = None) -> None:
        self.items, self.fail, self.calls = items, fail, []  # type: list[tuple[str, str]]

    def __call__(self, method: str, url: str, headers: Any, timeout: float) -> str:
        self.calls.append((method, url))
        assert timeout <= 2
        if self.fail is not None:
            raise self.fail
        if method == "PUT":
            assert url.endswith("/latest/api/token")
            assert headers["X-aws-ec2-metadata-token-ttl-seconds"]
            return "TOKEN"
        assert headers == {"X-aws-ec2-metadata-token": "TOKEN"}
        path = url.split("/latest/meta-data/", 1)[1]
        if path not in self.items:
            raise OSError("404")
        return self.items[path]


LIFECYCLE_ANSWERS = [("spot", "spot"), ("on-demand", "on-demand"), ("scheduled", "unknown")]


@pytest.mark.parametrize(("answer", "expected"), LIFECYCLE_ANSWERS)
def test_lifecycle_from_imds(answer: str, expected: str) -> None:
    imds = FakeImds({"instance-life-cycle": answer})
    assert cost.instance_lifecycle(fetch=imds) == expected
    assert imds.calls[0][0] == "PUT"  # the token first
    assert imds.calls[1] == ("GET", "http://169.254.169.254/latest/meta-data/instance-life-cycle")


def test_lifecycle_unknown_when_imds_times_out() -> None:
    imds = FakeImds({}, fail=TimeoutError("timed out"))
    assert cost.instance_lifecycle(fetch=imds) == "unknown"
    assert len(imds.calls) == 1  # no GET without a token


def test_lifecycle_unknown_off_ec2_with_the_real_fetcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "IMDS_URL", "http://127.0.0.1:9/latest")  # discard port: refused
    assert cost.instance_lifecycle(timeout=0.5) == "unknown"


def test_batch_job_fields_from_env_and_imds() -> None:
    imds = FakeImds({"instance-life-cycle": "spot", "instance-type": "c6i.2xlarge",
                     "placement/region": "us-east-1"})  # fmt: skip
    env = {cost.ENV_JOB_VCPUS: "4", cost.ENV_JOB_MEMORY_MIB: "2048"}
    fields = cost.batch_job_cost_fields(1800, environ=env, fetch=imds)
    expected = 0.14 * (4 + 2 / RATIO) / (8 + 16 / RATIO) * 0.5
    assert fields["cost_usd_estimate"] == pytest.approx(expected, abs=1e-6)
    assert (fields["lifecycle"], fields["instance_type"]) == ("spot", "c6i.2xlarge")
    offline = cost.batch_job_cost_fields(
        60, environ={**env, "AWS_REGION": "us-east-1"}, fetch=FakeImds({}, fail=OSError("no"))
    )
    assert offline["cost_usd_estimate"] is None and offline["lifecycle"] == "unknown"


def test_sagemaker_lifecycle_and_training_job_billing() -> None:
    assert cost.sagemaker_lifecycle({cost.ENV_SM_MANAGED_SPOT: "true"}) == "spot"
    assert cost.sagemaker_lifecycle({cost.ENV_SM_MANAGED_SPOT: "False"}) == "on-demand"
    assert cost.sagemaker_lifecycle({}) == "unknown"
    # DescribeTrainingJob fields (API reference): spot billed 100 of 500 s
    description = {"TrainingJobName": "t", "EnableManagedSpotTraining": True,
                   "BillableTimeInSeconds": 100, "TrainingTimeInSeconds": 500,
                   "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2,
                                      "VolumeSizeInGB": 30}}  # fmt: skip
    fields = cost.training_job_cost_fields(description, region="us-east-1")
    assert fields["cost_usd_estimate"] == pytest.approx(0.23 * 2 * 100 / 3600, abs=1e-6)
    assert fields["lifecycle"] == "spot" and fields["billable_seconds"] == 100


def test_processing_instance_from_the_job_config(tmp_path: Path) -> None:
    config = tmp_path / "processingjobconfig.json"
    config.write_text(json.dumps({"ProcessingResources": {"ClusterConfig": {
        "InstanceType": "ml.m5.4xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}}}))  # fmt: skip
    assert cost.processing_instance(config) == ("ml.m5.4xlarge", 1)
    assert cost.processing_instance(tmp_path / "missing.json") is None


# -- estimate vs actual ------------------------------------------------------------------------
RUN = "20261201-r1"


def _manifest(step: str, item: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {"schema": 2, "status": "committed", "run_id": RUN, "step": step, "item": item,
            "inputs": [], "outputs": [], "started_at": "2026-12-01T10:00:00+00:00",
            "finished_at": "2026-12-01T10:10:00+00:00", "seconds": 600.0,
            "summary": summary}  # fmt: skip


@pytest.fixture
def run_manifests(s3: Any) -> tuple[ObjectStore, str, dict[str, str]]:
    """A run whose align and call manifests carry cost fields (moto S3)."""
    curated = make_bucket(s3, "cost-curated")
    store = ObjectStore(s3)
    samples = {name: cost.sample_key(SECRET, name) for name in ("P001-T", "P001-N")}
    for step, lifecycle in (("align", "spot"), ("call", "on-demand")):
        for name, key in samples.items():
            fields = job_cost_fields(2, 8, 900, region="us-east-1", instance_type="m6i.2xlarge",
                                     lifecycle=lifecycle, sample=key)  # fmt: skip
            document = _manifest(step, name, {"status": "done", **fields})
            store.put_bytes(curated, manifest_key(RUN, step, name),
                            json.dumps(document).encode(), tags={})  # fmt: skip
    store.put_bytes(curated, manifest_key(RUN, "volume", "s1"),
                    json.dumps(_manifest("volume", "s1", {"status": "ok"})).encode(),
                    tags={})  # fmt: skip
    return store, curated, samples


def _ce() -> Any:
    return boto3.client("ce", region_name="us-east-1", aws_access_key_id="x",
                        aws_secret_access_key="x")  # fmt: skip


def _tags_response(status: str) -> dict[str, Any]:
    return {"CostAllocationTags": [
        {"TagKey": k, "Type": "UserDefined", "Status": status,
         "LastUpdatedDate": "2026-11-30T00:00:00Z", "LastUsedDate": "2026-12-01T00:00:00Z"}
        for k in cost.COST_ALLOCATION_TAGS]}  # fmt: skip


def _group(stage: str, sample: str, amount: str) -> dict[str, Any]:
    return {"Keys": [f"{TAG_STAGE}${stage}", f"{TAG_SAMPLE}${sample}"],
            "Metrics": {"UnblendedCost": {"Amount": amount, "Unit": "USD"}}}  # fmt: skip


def test_estimate_vs_actual_when_tags_are_active(run_manifests: Any) -> None:
    store, curated, samples = run_manifests
    manifests = list(cost_report.iter_run_manifests(store, [curated], RUN))
    tumour, normal = samples["P001-T"], samples["P001-N"]
    ce = _ce()
    request = {
        "TimePeriod": {"Start": "2026-12-01", "End": "2026-12-02"}, "Granularity": "DAILY",
        "Metrics": ["UnblendedCost"],
        "Filter": {"Tags": {"Key": TAG_RUN_ID, "Values": [RUN], "MatchOptions": ["EQUALS"]}},
        "GroupBy": [{"Type": "TAG", "Key": TAG_STAGE}, {"Type": "TAG", "Key": TAG_SAMPLE}],
    }  # fmt: skip
    period = {"TimePeriod": {"Start": "2026-12-01", "End": "2026-12-02"}, "Total": {},
              "Estimated": True}  # fmt: skip
    with Stubber(ce) as stub:
        tag_keys = {"TagKeys": list(cost.COST_ALLOCATION_TAGS), "Type": "UserDefined"}
        stub.add_response("list_cost_allocation_tags", _tags_response("Active"), tag_keys)
        stub.add_response("get_cost_and_usage", {
            "GroupDefinitions": request["GroupBy"],
            "ResultsByTime": [{**period, "Groups": [_group("align", tumour, "0.0123"),
                                                    _group("align", normal, "0.0100")]}],
            "NextPageToken": "page2", "DimensionValueAttributes": [],
        }, request)  # fmt: skip
        stub.add_response("get_cost_and_usage", {
            "ResultsByTime": [{**period, "Groups": [_group("call", tumour, "0.0400"),
                                                    _group("call", "", "0.0010")]}],
            "DimensionValueAttributes": [],
        }, {**request, "NextPageToken": "page2"})  # fmt: skip
        report = cost_report.cost_report(RUN, manifests, ce)
        stub.assert_no_pending_responses()
    assert report.actual_available and report.note == ""
    rows = {(r.stage, r.sample): r for r in report.rows}
    assert rows[("align", tumour)].actual_usd == pytest.approx(0.0123)
    assert rows[("call", tumour)].actual_usd == pytest.approx(0.04)
    assert rows[("call", "-")].actual_usd == pytest.approx(0.001)  # untagged usage of the run
    assert rows[("call", "-")].estimate_usd is None
    per_job = job_cost_fields(2, 8, 900, region="us-east-1", instance_type="m6i.2xlarge",
                              lifecycle="spot")["cost_usd_estimate"]  # fmt: skip
    assert rows[("align", tumour)].estimate_usd == pytest.approx(per_job)
    assert ("volume", "-") not in rows  # no cost fields: not a cost row
    assert report.actual_total == pytest.approx(0.0633)
    assert report.price_as_of == ["2026-12-02"]


def test_estimates_only_when_tags_are_not_active_yet(run_manifests: Any) -> None:
    store, curated, _ = run_manifests
    manifests = list(cost_report.iter_run_manifests(store, [curated], RUN))
    ce = _ce()
    with Stubber(ce) as stub:
        stub.add_response("list_cost_allocation_tags", _tags_response("Inactive"))
        report = cost_report.cost_report(RUN, manifests, ce)
        stub.assert_no_pending_responses()  # no GetCostAndUsage
    assert not report.actual_available and report.actual_total is None
    assert "not active yet" in report.note and "24 h" in report.note
    assert len(report.rows) == 4 and all(r.estimate_usd for r in report.rows)


def test_estimates_only_when_cost_explorer_is_denied(run_manifests: Any) -> None:
    store, curated, _ = run_manifests
    manifests = list(cost_report.iter_run_manifests(store, [curated], RUN))
    ce = _ce()
    with Stubber(ce) as stub:
        stub.add_client_error("list_cost_allocation_tags", "AccessDeniedException",
                              "User is not authorized", 400)  # fmt: skip
        report = cost_report.cost_report(RUN, manifests, ce)
    assert not report.actual_available
    assert report.note == "estimates only: Cost Explorer unavailable (AccessDeniedException)"
    assert report.estimate_total > 0


def test_ops_cost_command_prints_estimates(run_manifests: Any,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    from click.testing import CliRunner

    from oncopipe.cli import main

    _, curated, samples = run_manifests
    quarantine = make_bucket(_s3(), "cost-q")
    monkeypatch.setenv("CURATED_BUCKET", curated)
    monkeypatch.setenv("QUARANTINE_BUCKET", quarantine)
    result = CliRunner().invoke(main, ["ops", "cost", "--run", RUN, "--no-actual"])
    assert result.exit_code == 0, result.output
    assert "estimates only" in result.output
    assert samples["P001-T"] in result.output and "P001-T" not in result.output
    assert "align" in result.output and "call" in result.output


def _s3() -> Any:
    return boto3.client("s3", region_name="eu-west-1")
