"""Stage metrics and cost estimates of the adapters: the EMF lines they write, the ``cost``
each manifest records, and ``oncopipe ops cost`` summing them beside Cost Explorer.

The adapters run in-process with moto S3. Where a core would need bwa, pyradiomics or
torch, a small stand-in core commits its item through the real
:func:`oncopipe.manifest.process_item`: what is tested is the adapter's contract (metrics,
metering, the manifest's ``cost``), not the science, which the cores' own tests cover.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from botocore.stub import Stubber

from oncopipe.layout import Buckets
from oncopipe.manifest import (
    COST_PROFILE_ENV,
    ItemResult,
    ItemWriter,
    StepContext,
    iter_manifests,
    process_item,
)
from oncopipe.metrics import COST, FAILED, ITEMS_IN, QUARANTINED, RETRIED, STAGES, SUCCEEDED
from oncopipe.ops import cost, cost_report
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32))
RUN = "ingest-20261201"
MRN = "MRN-7781234"
NAME = "dubois_marie"
FASTQ_KEY = f"fastq/{MRN}_{NAME}_R1.fastq.gz"
BUCKETS = Buckets(ingest="sc-ingest", quarantine="sc-quarantine", curated="sc-curated",
                  artifacts="sc-artifacts")  # fmt: skip
FASTQ = gzip.compress(b"@r1\nACGT\n+\nIIII\n", mtime=0)
#: What the instance metadata says on a spot m6i.2xlarge Batch host.
SPOT_HOST = {"instance-life-cycle": "spot", "instance-type": "m6i.2xlarge",
             "placement/region": "us-east-1"}  # fmt: skip


def emf(text: str) -> list[dict[str, Any]]:
    """Return the EMF documents among output lines."""
    return [json.loads(line) for line in text.splitlines()
            if line.startswith("{") and '"_aws"' in line]  # fmt: skip


def assert_clean(document: dict[str, Any], stage: str) -> None:
    """The EMF document is of ``stage``, dimensioned by environment and stage only, no PHI."""
    assert document["Stage"] == stage and stage in STAGES
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Dimensions"] == [["Environment", "Stage"]]
    text = json.dumps(document)
    for planted in (MRN, NAME, FASTQ_KEY, "P9-T"):
        assert planted not in text


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    for name in (BUCKETS.ingest, BUCKETS.quarantine, BUCKETS.curated, BUCKETS.artifacts):
        make_bucket(s3, name)
    return ObjectStore(s3)


@pytest.fixture
def env(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"INGEST_BUCKET": BUCKETS.ingest, "QUARANTINE_BUCKET": BUCKETS.quarantine,
                        "CURATED_BUCKET": BUCKETS.curated, "ARTIFACTS_BUCKET": BUCKETS.artifacts,
                        "ONCOPIPE_PSEUDONYM_SECRET": SECRET.hex(), "ONCOPIPE_ENV": "dev",
                        "POWERTOOLS_TRACE_DISABLED": "true"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(COST_PROFILE_ENV, raising=False)


@pytest.fixture
def spot_batch_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Batch job reserving 4 vCPUs and 16 GiB on a spot m6i.2xlarge (IMDS stand-in)."""
    monkeypatch.setenv(cost.ENV_JOB_VCPUS, "4")
    monkeypatch.setenv(cost.ENV_JOB_MEMORY_MIB, "16384")

    def imds(method: str, url: str, headers: Any, timeout: float) -> str:
        if method == "PUT":
            return "TOKEN"
        return SPOT_HOST[url.split("/meta-data/", 1)[1]]

    monkeypatch.setattr(cost, "_urllib_fetch", imds)


def _upload(store: ObjectStore, key: str, data: bytes) -> Any:
    return store.put_bytes(BUCKETS.ingest, key, data, tags={})


class _Context:
    function_name = "ingest"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:eu-west-1:123456789012:function:ingest"
    aws_request_id = "req-1"


def _load(module: str) -> Any:
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def _event(key: str) -> dict[str, Any]:
    return {"source": "aws.s3", "detail-type": "Object Created", "time": "2026-12-01T10:00:00Z",
            "run_id": RUN, "detail": {"bucket": {"name": BUCKETS.ingest},
                                      "object": {"key": key, "size": 1}}}  # fmt: skip


# -- the ingest Lambdas -----------------------------------------------------------------------
def test_quarantine_handler_records_the_items_end_in_the_ingest_stage(
    store: ObjectStore, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _upload(store, FASTQ_KEY, b"not a fastq")
    handler = _load("lambdas.ingest_quarantine.handler")
    capsys.readouterr()
    result = handler.lambda_handler({"event": _event(FASTQ_KEY), "error": {"Error": "KeyError"}},
                                    _Context())  # fmt: skip
    assert result["status"] == "quarantined"
    out = capsys.readouterr()
    (document,) = emf(out.out + out.err)
    assert_clean(document, "ingest")
    assert document[QUARANTINED] == [1.0] and ITEMS_IN not in document  # the router counted it
    assert document["BytesProcessed"] == [float(len(b"not a fastq"))]
    assert document["Environment"] == "dev"


def test_reconcile_handler_counts_orphaned_files_quarantined(
    store: ObjectStore, env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    _upload(store, FASTQ_KEY, FASTQ)
    routed = _load("lambdas.ingest_router.handler").lambda_handler(_event(FASTQ_KEY), _Context())
    assert routed["status"] == "received"
    handler = _load("lambdas.ingest_reconcile.handler")
    capsys.readouterr()
    assert handler.lambda_handler({"run_id": RUN}, _Context())["quarantined"] == 1
    again = handler.lambda_handler({"run_id": RUN}, _Context())
    assert again["quarantined"] == 1  # the same file, skipped the second time
    out = capsys.readouterr()
    first, second = emf(out.out + out.err)
    for document in (first, second):
        assert_clean(document, "ingest")
        assert document[ITEMS_IN] == [1.0]
    assert first[QUARANTINED] == [1.0] and "ItemDuration" in first
    assert second["ItemsSkipped"] == [1.0] and QUARANTINED not in second


# -- the genomics Batch job ---------------------------------------------------------------------
TABLE = "cohort/samples/ingest-20261201/sheet.jsonl"


def _lanes() -> list[dict[str, Any]]:
    """The stage inputs of the sample table (:func:`load_samples`' result): one tumour."""
    from oncopipe.pseudonym import keyer

    return [{"patient_key": keyer(SECRET)(MRN), "sample": "P9-T", "type": "tumour",
             "fastq_1": FASTQ_KEY, "fastq_2": FASTQ_KEY, "lane": "1"}]  # fmt: skip


def _fake_align(store: ObjectStore) -> Any:
    """A stand-in align core: reads the FASTQ, commits one output through process_item."""

    def align_sample(store_: Any, buckets: Buckets, lanes: Any, run_id: str, **_: Any) -> Any:
        ref = store.head(buckets.ingest, FASTQ_KEY)
        assert ref is not None
        ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id,
                          step="align", key_secret=SECRET)  # fmt: skip

        def work(writer: ItemWriter) -> dict[str, Any]:
            writer.put(buckets.curated, "genomics/bam/pk/P9-T.bam", b"BAM")
            return {"kind": "sample", "status": "aligned", "reads": 1}

        return process_item(ctx, str(lanes[0]["sample"]), [ref], work)

    return align_sample


def test_align_job_publishes_metrics_and_commits_its_cost_in_the_manifest(
    store: ObjectStore, env: None, spot_batch_host: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from batch_jobs.genomics import __main__ as job

    table = TABLE
    _upload(store, FASTQ_KEY, FASTQ)
    monkeypatch.setattr(job, "align_sample", _fake_align(store))
    monkeypatch.setattr(job, "load_samples", lambda *a: _lanes())
    monkeypatch.setenv("AWS_BATCH_JOB_ATTEMPT", "2")  # a spot reclaim retried it
    capsys.readouterr()
    assert job.main(["align", "--run-id", RUN, "--sample-table", table, "--sample", "P9-T"]) == 0
    out = capsys.readouterr()
    (document,) = emf(out.err)
    assert_clean(document, "align")
    assert document[ITEMS_IN] == [1.0] and document[SUCCEEDED] == [1.0]
    assert document[RETRIED] == [1.0]
    assert document["BytesProcessed"] == [float(len(FASTQ))]
    assert document[COST][0] > 0
    (manifest,) = iter_manifests(store, BUCKETS.curated, RUN, "align")
    recorded = manifest["cost"]
    assert recorded["lifecycle"] == "spot" and recorded["instance_type"] == "m6i.2xlarge"
    assert recorded["cost_sample"] == cost.sample_key(SECRET, "P9-T")
    assert recorded["cost_usd_estimate"] > 0 and recorded["price_as_of"] == "2026-12-02"
    # 4 of 8 vCPUs and 16 of 32 GiB of a 0.16 USD/h spot host: half its price per second
    per_second = 0.16 / 2 / 3600
    assert recorded["cost_usd_estimate"] == pytest.approx(recorded["seconds"] * per_second,
                                                          abs=1e-6)  # fmt: skip
    (line,) = [json.loads(x) for x in out.out.splitlines() if x.startswith("{")]
    assert line["cost"]["lifecycle"] == "spot" and line["item_status"] == "done"


def test_a_failed_call_job_counts_a_failure_and_its_cost(
    store: ObjectStore, env: None, spot_batch_host: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from batch_jobs.genomics import __main__ as job

    monkeypatch.setattr(job, "load_samples", lambda *a: _lanes())
    table = TABLE  # no BAM was aligned: the call fails
    capsys.readouterr()
    assert job.main(["call", "--run-id", RUN, "--sample-table", table, "--sample", "P9-T"]) == 1
    out = capsys.readouterr()
    (document,) = emf(out.err)
    assert_clean(document, "call")
    assert document[ITEMS_IN] == [1.0] and document[FAILED] == [1.0]
    assert COST in document and RETRIED not in document
    assert list(iter_manifests(store, BUCKETS.curated, RUN, "call")) == []


# -- the multi-item jobs: each item charged its own seconds ----------------------------------------
def _fake_items(store: ObjectStore, step: str, items: list[str], status: str = "converted") -> Any:
    def build(store_: Any, buckets: Buckets, run_id: str, **_: Any) -> list[ItemResult]:
        ctx = StepContext(store=store, manifest_bucket=buckets.curated, run_id=run_id, step=step)
        results = []
        for item in items:

            def work(writer: ItemWriter, item: str = item) -> dict[str, Any]:
                writer.put(buckets.curated, f"imaging/pixels/{item}.parquet", item.encode())
                return {"status": status, "patient_key": "pk-0000000000000001"}

            results.append(process_item(ctx, item, [], work))
        return results

    return build


def test_volumes_job_records_each_series_cost_and_the_jobs_metric(
    store: ObjectStore, env: None, spot_batch_host: None, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from batch_jobs.imaging import __main__ as job

    monkeypatch.setattr(job, "build_series_volumes",
                        _fake_items(store, "volumes", ["1.2.3", "1.2.4"]))  # fmt: skip
    capsys.readouterr()
    assert job.main(["volumes", "--run-id", RUN]) == 0
    out = capsys.readouterr()
    (document,) = emf(out.err)
    assert_clean(document, "volumes")
    assert document[ITEMS_IN] == [2.0] and document[SUCCEEDED] == [1.0, 1.0]
    assert len(document["ItemDuration"]) == 2 and document[COST][0] > 0
    manifests = list(iter_manifests(store, BUCKETS.curated, RUN, "volumes"))
    assert len(manifests) == 2
    for manifest in manifests:  # not the whole job: the item's own seconds
        assert manifest["cost"]["seconds"] == pytest.approx(manifest["seconds"], abs=0.05)
        assert manifest["cost"]["lifecycle"] == "spot"
    assert not os.environ.get(COST_PROFILE_ENV)  # metering ends with the job


def test_cohort_job_publishes_its_stage_and_charges_the_build_the_whole_job(
    store: ObjectStore, env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    import processing.cohort as cohort

    config = tmp_path / "processingjobconfig.json"
    config.write_text(json.dumps({"ProcessingResources": {"ClusterConfig": {
        "InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}}}))  # fmt: skip
    profile = cost.processing_job_profile
    monkeypatch.setattr(cost, "processing_job_profile",
                        lambda **k: profile(config_path=config, **k))  # fmt: skip
    monkeypatch.setenv("AWS_REGION", "us-east-1")

    def build(curated: str, build_id: str, store_: Any, *, seed: int = 0,
              stats: dict[str, object] | None = None) -> dict[str, object]:  # fmt: skip
        (result,) = _fake_items(store, "cohort", [build_id], "built")(store, BUCKETS, build_id)
        if stats is not None:
            stats.update(status=result.status, input_bytes=123)
        return {"build_id": build_id, "patients": 3}

    monkeypatch.setattr(cohort, "build", build)
    capsys.readouterr()
    assert cohort.main(["stage", "--build-id", "build-7"]) == 0
    out = capsys.readouterr()
    (document,) = emf(out.err)
    assert_clean(document, "cohort")
    assert document[SUCCEEDED] == [1.0] and document["BytesProcessed"] == [123.0]
    (manifest,) = iter_manifests(store, BUCKETS.curated, "build-7", "cohort")
    assert manifest["cost"]["instance_type"] == "ml.m5.xlarge"
    assert manifest["cost"]["lifecycle"] == "on-demand"  # Processing has no spot
    line = json.loads(out.out.splitlines()[-1])
    # the job's estimate covers at least what the manifest was charged (the job went on)
    assert line["cost"]["cost_usd_estimate"] >= manifest["cost"]["cost_usd_estimate"]


def test_radiomics_workers_inherit_the_profile_and_pay_a_share() -> None:
    """Spawned worker processes (radiomics ``--workers``) see the job's profile."""
    profile = cost.JobProfile(vcpus=4, memory_gib=16, instance_type="ml.m5.xlarge",
                              lifecycle="on-demand", region="us-east-1", concurrency=4,
                              started=0.0)  # fmt: skip
    code = ("import json; from oncopipe.ops.cost import item_cost; "
            "print(json.dumps(item_cost(3600.0)))")  # fmt: skip
    repo = str(Path(__file__).resolve().parents[2])
    with cost.metering(profile):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, cwd=repo)  # fmt: skip
    fields = json.loads(done.stdout)
    assert fields["cost_usd_estimate"] == pytest.approx(0.23 / 4, abs=1e-6)  # a quarter hour
    assert fields["vcpu_seconds"] == pytest.approx(3600.0)


# -- SageMaker training ----------------------------------------------------------------------------
def test_training_job_profile_from_resourceconfig_and_spot_variable(tmp_path: Path) -> None:
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"],
                                  "current_instance_type": "ml.m5.xlarge"}))  # fmt: skip
    environ = {cost.ENV_SM_MANAGED_SPOT: "true", "AWS_REGION": "us-east-1"}
    profile = cost.training_job_profile(config_path=config, environ=environ, started=0.0)
    fields = profile.job_fields(now=1800.0)
    assert fields["lifecycle"] == "spot" and "upper bound" in fields["cost_note"]
    assert fields["cost_usd_estimate"] == pytest.approx(0.23 * 2 / 2, abs=1e-6)
    assert fields["vcpu_seconds"] == pytest.approx(8 * 1800)


def test_training_entry_records_its_cost_in_metrics_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import training.train as entry

    for name in ("train", "model", "output"):
        (tmp_path / name).mkdir()
    (tmp_path / "train" / "dataset.parquet").write_bytes(b"x" * 10)
    monkeypatch.setenv("SM_CURRENT_INSTANCE_TYPE", "ml.m5.large")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv(cost.ENV_SM_MANAGED_SPOT, "false")

    class Result:
        metrics: ClassVar[dict[str, Any]] = {"best_epoch": 1, "best_val_auc": 0.7,
                                             "samples_per_second": 5.0,
                                             "resumed_from_epoch": None}  # fmt: skip

    def train(*a: Any, output_dir: Any = None, **k: Any) -> Any:
        (Path(output_dir) / "metrics.json").write_text(json.dumps(Result.metrics))
        return Result()

    monkeypatch.setattr(entry, "train", train)
    capsys.readouterr()
    args = ["--train", str(tmp_path / "train"), "--model-dir", str(tmp_path / "model"),
            "--output-dir", str(tmp_path / "output"), "--package", "false"]  # fmt: skip
    assert entry.main(args) == 0
    out = capsys.readouterr()
    (document,) = emf(out.err)
    assert_clean(document, "training")
    assert document[SUCCEEDED] == [1.0] and document["BytesProcessed"] == [10.0]
    recorded = json.loads((tmp_path / "output" / "metrics.json").read_text())["cost"]
    assert recorded["instance_type"] == "ml.m5.large" and recorded["lifecycle"] == "on-demand"
    assert recorded["cost_usd_estimate"] is not None
    assert json.loads(out.out.splitlines()[-1])["cost"] == recorded


# -- ops cost from the manifests ------------------------------------------------------------
@pytest.fixture
def metered_run(store: ObjectStore, env: None) -> Iterator[dict[str, str]]:
    """Align manifests of two samples written by process_item in metered jobs."""
    samples = {name: cost.sample_key(SECRET, name) for name in ("P9-T", "P9-N")}
    for name, key in samples.items():
        profile = cost.JobProfile(vcpus=4, memory_gib=16, instance_type="m6i.2xlarge",
                                  lifecycle="spot", priced_as="spot", region="us-east-1",
                                  sample=key, started=0.0)  # fmt: skip
        ctx = StepContext(store=store, manifest_bucket=BUCKETS.curated, run_id=RUN, step="align")
        with cost.metering(profile):
            process_item(ctx, name, [], lambda w: {"status": "aligned"})
    yield samples


def test_ops_cost_prints_the_manifests_estimates_beside_the_actual(
    metered_run: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from oncopipe.cli import main

    manifests = list(cost_report.iter_run_manifests(ObjectStore(boto3.client("s3")),
                                             [BUCKETS.curated], RUN))  # fmt: skip
    rows = {(r.stage, r.sample): r for r in cost_report.estimates_from_manifests(manifests)}
    tumour = metered_run["P9-T"]
    assert rows[("align", tumour)].estimate_usd == pytest.approx(
        manifests[0]["cost"]["cost_usd_estimate"] if manifests[0]["item"] == "P9-T"
        else manifests[1]["cost"]["cost_usd_estimate"])  # fmt: skip
    ce = boto3.client("ce", region_name="us-east-1", aws_access_key_id="x",
                      aws_secret_access_key="x")  # fmt: skip
    stub = Stubber(ce)
    stub.add_response("list_cost_allocation_tags", {"CostAllocationTags": [
        {"TagKey": k, "Type": "UserDefined", "Status": "Active"}
        for k in cost.COST_ALLOCATION_TAGS]})  # fmt: skip
    stub.add_response("get_cost_and_usage", {"ResultsByTime": [{
        "TimePeriod": {"Start": "2026-12-01", "End": "2026-12-02"}, "Estimated": True,
        "Groups": [{"Keys": [f"{cost.TAG_STAGE}$align", f"{cost.TAG_SAMPLE}${tumour}"],
                    "Metrics": {"UnblendedCost": {"Amount": "0.0420",
                                                  "Unit": "USD"}}}]}]})  # fmt: skip
    real_client = boto3.client
    monkeypatch.setattr(boto3, "client", lambda name, *a, **k: (
        ce if name == "ce" else real_client(name, *a, **k)))  # fmt: skip
    with stub:
        result = CliRunner().invoke(main, ["ops", "cost", "--run", RUN])
    assert result.exit_code == 0, result.output
    (tumour_line,) = [line for line in result.output.splitlines() if tumour in line]
    assert "align" in tumour_line and "0.0420" in tumour_line
    assert metered_run["P9-N"] in result.output and "P9-T" not in result.output
    assert "actual 0.0420 USD" in result.output and "prices as of 2026-12-02" in result.output


def test_manifests_outside_a_metered_job_have_no_cost_field(store: ObjectStore) -> None:
    ctx = StepContext(store=store, manifest_bucket=BUCKETS.curated, run_id=RUN, step="notes")
    os.environ.pop(COST_PROFILE_ENV, None)
    process_item(ctx, "n1", [], lambda w: {"status": "ok"})
    (manifest,) = iter_manifests(store, BUCKETS.curated, RUN, "notes")
    assert "cost" not in manifest
    assert cost_report.estimates_from_manifests([manifest]) == []
    assert COST_PROFILE_ENV == cost.ENV_COST_PROFILE
