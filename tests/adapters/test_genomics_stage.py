"""The genomics stage on object storage: quarantine of bad FASTQ, kill and resume."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest

from oncopipe import layout
from oncopipe.genomics.simulate import make_panel, simulate_pair, write_fasta
from oncopipe.genomics.stage import align_sample, bam_key, call_sample
from oncopipe.layout import Buckets
from oncopipe.manifest import manifest_key
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

pytestmark = pytest.mark.skipif(shutil.which("bwa") is None, reason="installed by make setup")
BUCKETS = Buckets(ingest="g-ingest", quarantine="g-quarantine", curated="g-curated",
                  artifacts="g-artifacts")  # fmt: skip
SAMPLE = {"sample": "P1-T", "type": "tumour", "patient_key": "pk-aaaaaaaaaaaaaaaa",
          "fastq_1": "fastq/P1-T_R1.fastq.gz", "fastq_2": "fastq/P1-T_R2.fastq.gz",
          "lane": "1", "library": "P1-T", "platform": "ILLUMINA"}  # fmt: skip
SECRET = bytes(range(32))  # the pseudonymisation secret: opaque references in curated


def _populate(store: ObjectStore, tmp: Path, *, broken: bool = False) -> None:
    for name in (BUCKETS.ingest, BUCKETS.quarantine, BUCKETS.curated, BUCKETS.artifacts):
        make_bucket(store.client, name)
    sequences, panel, changes = make_panel()
    write_fasta(sequences, tmp / "panel.fa")
    panel.dump(tmp / "panel.json")
    for name in ("panel.fa", "panel.json"):
        store.client.upload_file(str(tmp / name), BUCKETS.artifacts,
                                 f"{layout.ARTIFACTS_REFERENCE}{name}")  # fmt: skip
    kras = changes["KRAS G12C"][0]
    from oncopipe.genomics.simulate import Variant

    planted = [Variant(kras.contig, kras.pos, kras.ref, kras.alt, 0.4, "KRAS", "G12C")]
    r1, r2 = simulate_pair(sequences, planted, sample="P1-T", depth=60, seed=5)
    if broken:  # a truncated upload of read 2
        r2 = r2[: len(r2) // 2]
    store.client.put_object(Bucket=BUCKETS.ingest, Key=SAMPLE["fastq_1"], Body=r1)
    store.client.put_object(Bucket=BUCKETS.ingest, Key=SAMPLE["fastq_2"], Body=r2)


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    return ObjectStore(s3)


def test_align_then_call_writes_bam_vcf_and_variant_table(
    store: ObjectStore, tmp_path: Path
) -> None:
    _populate(store, tmp_path)
    aligned = align_sample(store, BUCKETS, [SAMPLE], "run-1", key_secret=SECRET)
    assert aligned.summary["status"] == "aligned"
    assert aligned.summary["qc"]["mapped_fraction"] > 0.99
    key = bam_key(SAMPLE["patient_key"], SAMPLE["sample"])
    assert store.get_tags(BUCKETS.curated, key) == {"run-id": "run-1", "step": "align"}
    # the BWA index was built once and stored beside the reference
    assert store.exists(BUCKETS.artifacts, f"{layout.ARTIFACTS_REFERENCE}panel.fa.bwt")
    called = call_sample(store, BUCKETS, SAMPLE, None, "run-1")
    assert called.summary["hotspots"] == ["KRAS G12C"]
    assert any(k.endswith(".parquet") for k in called.outputs)
    assert align_sample(store, BUCKETS, [SAMPLE], "run-1", key_secret=SECRET).status == "skipped"


def test_truncated_fastq_is_quarantined_and_nothing_is_curated(
    store: ObjectStore, tmp_path: Path
) -> None:
    _populate(store, tmp_path, broken=True)
    result = align_sample(store, BUCKETS, [SAMPLE], "run-1", key_secret=SECRET)
    assert result.summary["status"] == "quarantined"
    assert result.summary["reason_code"] == "invalid-fastq"
    # the curated manifest keeps the code; the readable reason (it names the key) is in
    # the quarantine zone only
    assert "reason" not in result.summary and "details" not in result.summary
    reason = json.loads(store.get_bytes(
        BUCKETS.quarantine, "run-1/fastq/P1-T_R2.fastq.gz.reason.json"))  # fmt: skip
    assert "truncated or corrupt" in reason["message"]
    assert not any(k.startswith("genomics/") for k in store.list_keys(BUCKETS.curated))
    with pytest.raises(Exception, match="no aligned BAM"):
        call_sample(store, BUCKETS, SAMPLE, None, "run-1")


def _align_and_get_killed(endpoint: str) -> None:  # runs in a spawned child process
    import signal

    import oncopipe.genomics.stage as stage

    real = stage.align_pair

    def align_then_die(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)  # the BAM exists locally: die before it is committed
        os.kill(os.getpid(), signal.SIGKILL)

    stage.align_pair = align_then_die
    client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    stage.align_sample(ObjectStore(client), BUCKETS, [SAMPLE], "run-1", key_secret=SECRET)


def test_killed_alignment_leaves_no_manifest_and_is_redone(aws_env: None, tmp_path: Path) -> None:
    from moto.server import ThreadedMotoServer

    from oncopipe.local.server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        store = ObjectStore(boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1"))
        _populate(store, tmp_path)
        child = multiprocessing.get_context("spawn").Process(
            target=_align_and_get_killed, args=(endpoint,)
        )
        child.start()
        child.join(120)
        assert child.exitcode == -9
        key = manifest_key("run-1", "align", SAMPLE["sample"])
        assert store.head(BUCKETS.curated, key) is None
        redone = align_sample(store, BUCKETS, [SAMPLE], "run-1", key_secret=SECRET)
        assert redone.status == "done" and redone.summary["status"] == "aligned"
        assert store.head(BUCKETS.curated, key) is not None
    finally:
        server.stop()


def test_lanes_of_one_sample_are_merged_with_their_read_groups(
    store: ObjectStore, tmp_path: Path
) -> None:
    import pysam

    _populate(store, tmp_path)
    lane_2 = {**SAMPLE, "lane": "2", "fastq_1": "fastq/P1-T_L2_R1.fastq.gz",
              "fastq_2": "fastq/P1-T_L2_R2.fastq.gz"}  # fmt: skip
    for column in ("fastq_1", "fastq_2"):
        body = store.get_bytes(BUCKETS.ingest, SAMPLE[column])
        store.client.put_object(Bucket=BUCKETS.ingest, Key=lane_2[column], Body=body)
    result = align_sample(store, BUCKETS, [SAMPLE, lane_2], "run-1", key_secret=SECRET)
    assert result.summary["lanes"] == 2
    local = tmp_path / "merged.bam"
    store.download_file(BUCKETS.curated, bam_key(SAMPLE["patient_key"], "P1-T"), str(local))
    with pysam.AlignmentFile(str(local)) as bam:
        groups = sorted(g["ID"] for g in bam.header.to_dict()["RG"])
        assert groups == ["P1-T.1", "P1-T.2"]
        assert bam.header.to_dict()["HD"]["SO"] == "coordinate"
