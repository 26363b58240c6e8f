"""The daily drift job on moto S3 and CloudWatch: windows, baseline, metrics, report."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import numpy as np
import pytest

from oncopipe import layout
from oncopipe.monitor.histogram import VAF_EDGES, Histogram, Stratum, encode, to_document
from oncopipe.monitor.job import SCORE, baseline_document, report_keys, run
from oncopipe.monitor.window import AlarmRule
from tests.conftest import REGION, make_bucket

DAY = "2026-12-01"
PAIRED = Stratum("panel-v1", "paired")
RULE = AlarmRule(threshold=0.03, m=1, n=1, min_samples=10)


def sample_vafs(rng: np.random.Generator, shift: float) -> list[float]:
    return list(np.clip(rng.beta(6, 9, 12) + shift, 0, 1))


@pytest.fixture
def clients(aws_env: None) -> Iterator[tuple[object, object]]:
    from moto import mock_aws

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        make_bucket(s3, "curated")
        make_bucket(s3, "artifacts")
        yield s3, boto3.client("cloudwatch", region_name=REGION)


def write_day(s3: object, rng: np.random.Generator, samples: int, shift: float,
              stratum: Stratum = PAIRED) -> None:  # fmt: skip
    for i in range(samples):
        h = Histogram.of(sample_vafs(rng, shift), VAF_EDGES)
        key = layout.vaf_histogram_key(DAY, f"pk{i}", f"{stratum.mode}-{i}")
        s3.put_object(Bucket="curated", Key=key, Body=encode(to_document(h, stratum, day=DAY)))  # type: ignore[attr-defined]


def baseline(rng: np.random.Generator) -> dict[str, object]:
    total = Histogram.empty(VAF_EDGES)
    for _ in range(500):
        total = total + Histogram.of(sample_vafs(rng, 0.0), VAF_EDGES)
    return baseline_document({PAIRED: total}, model_package_arn="arn:pkg/1")


def score(cw: object) -> list[float]:
    answer = cw.get_metric_statistics(  # type: ignore[attr-defined]
        Namespace="Oncopipe", MetricName=SCORE,
        Dimensions=[{"Name": "Environment", "Value": "test"}, {"Name": "Monitor", "Value": "vaf"}],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(hours=1), Period=3600, Statistics=["Maximum"],
    )  # fmt: skip
    return [p["Maximum"] for p in answer["Datapoints"]]


def go(s3: object, cw: object, base: dict[str, object]):  # type: ignore[no-untyped-def]
    return run(s3=s3, cloudwatch=cw, curated_bucket="curated",
               histograms_prefix=layout.CURATED_GENOMICS_VAF_HISTOGRAMS,
               artifacts_bucket="artifacts", baseline=base, day=DAY, rule=RULE,
               environment="test")  # fmt: skip


def test_a_shifted_day_breaches_and_writes_json_and_png(clients: tuple[object, object]) -> None:
    s3, cw = clients
    rng = np.random.default_rng(1)
    base = baseline(rng)
    write_day(s3, rng, 20, 0.12)
    report = go(s3, cw, base)
    (result,) = report.results
    assert result.monitor == "vaf/panel-v1/paired" and result.samples == 20
    assert result.breaching and result.distances is not None
    assert result.distances.wasserstein == pytest.approx(0.12 * 0.85, abs=0.03)
    json_key, png_key = report_keys(DAY)
    body = json.loads(s3.get_object(Bucket="artifacts", Key=json_key)["Body"].read())  # type: ignore[attr-defined]
    assert body["monitors"][0]["breaching"] and body["alarm_distance"] == "wasserstein"
    png = s3.get_object(Bucket="artifacts", Key=png_key)["Body"].read()  # type: ignore[attr-defined]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert score(cw) and score(cw)[0] > RULE.threshold


def test_an_unshifted_day_does_not_breach(clients: tuple[object, object]) -> None:
    s3, cw = clients
    rng = np.random.default_rng(2)
    base = baseline(rng)
    write_day(s3, rng, 20, 0.0)
    (result,) = go(s3, cw, base).results
    assert not result.breaching
    assert score(cw) and score(cw)[0] < RULE.threshold


def test_a_window_below_min_samples_publishes_no_score(clients: tuple[object, object]) -> None:
    s3, cw = clients
    rng = np.random.default_rng(3)
    base = baseline(rng)
    write_day(s3, rng, 9, 0.3)  # a large shift, but too few samples to count
    write_day(s3, rng, 12, 0.0, Stratum("panel-v1", "tumour_only"))  # no baseline stratum
    report = go(s3, cw, base)
    notes = {r.monitor: r.note for r in report.results}
    assert notes == {"vaf/panel-v1/paired": "fewer than 10 samples",
                     "vaf/panel-v1/tumour_only": "no baseline for this stratum"}  # fmt: skip
    assert not any(r.breaching for r in report.results)
    assert score(cw) == []


def test_an_empty_baseline_monitor_is_reported_and_the_others_still_run(
    clients: tuple[object, object],
) -> None:
    s3, cw = clients
    rng = np.random.default_rng(4)
    base = baseline(rng)
    only_tumour = Stratum("panel-v1", "tumour_only")
    empty = baseline_document({only_tumour: Histogram.empty(VAF_EDGES)}, model_package_arn="x")
    base["monitors"].update(empty["monitors"])  # type: ignore[attr-defined]
    write_day(s3, rng, 20, 0.12)
    write_day(s3, rng, 20, 0.12, only_tumour)
    report = go(s3, cw, base)
    by_name = {r.monitor: r for r in report.results}
    assert by_name["vaf/panel-v1/tumour_only"].note == "the baseline of this monitor is empty"
    assert by_name["vaf/panel-v1/tumour_only"].distances is None
    assert by_name["vaf/panel-v1/paired"].breaching  # evaluated as before
