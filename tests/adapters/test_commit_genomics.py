"""The genomics stage on moto: a re-upload that now fails retracts, manifests stay opaque."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from oncopipe import catalog
from oncopipe.errors import InputError
from oncopipe.genomics.stage import align_sample, bam_key, call_sample
from oncopipe.manifest import committed_outputs, read_manifest
from oncopipe.storage import ObjectStore
from tests.adapters.test_genomics_stage import BUCKETS, SAMPLE, SECRET, _populate

pytestmark = pytest.mark.skipif(shutil.which("bwa") is None, reason="installed by make setup")


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    return ObjectStore(s3)


def _curated_manifests(store: ObjectStore) -> list[bytes]:
    return [store.get_bytes(BUCKETS.curated, k)
            for k in store.list_keys(BUCKETS.curated, "_manifests/")]  # fmt: skip


def test_reupload_of_invalid_fastq_retracts_the_committed_alignment(
    store: ObjectStore, tmp_path: Path
) -> None:
    _populate(store, tmp_path)
    aligned = align_sample(store, BUCKETS, [SAMPLE], "run-1", key_secret=SECRET)
    assert aligned.summary["status"] == "aligned"
    bam = bam_key(SAMPLE["patient_key"], SAMPLE["sample"])
    assert store.head(BUCKETS.curated, bam) is not None
    called = call_sample(store, BUCKETS, SAMPLE, None, "run-1")
    variants = catalog.committed_files(store, BUCKETS.curated, "variants")
    assert variants == [k for k in called.outputs if k.endswith(".parquet")]

    # the same key uploaded again, now truncated: the item is redone and quarantined
    r2 = store.get_bytes(BUCKETS.ingest, SAMPLE["fastq_2"])
    store.client.put_object(Bucket=BUCKETS.ingest, Key=SAMPLE["fastq_2"], Body=r2[: len(r2) // 2])
    again = align_sample(store, BUCKETS, [SAMPLE], "run-1", key_secret=SECRET)
    assert again.status == "done" and again.summary["status"] == "quarantined"
    for key in (bam, f"{bam}.bai", bam.replace(".bam", ".qc.json")):
        assert store.head(BUCKETS.curated, key) is None  # retracted (delete markers)
    tomb = read_manifest(store, BUCKETS.curated, aligned.manifest_key)
    assert tomb is not None and tomb["status"] == "retracted"
    assert tomb["reason_code"] == "invalid-fastq"
    assert {r["key"] for r in tomb["retracted"]} >= {bam, f"{bam}.bai"}
    assert committed_outputs(store, BUCKETS.curated, "run-1", "align") == []
    # calling again finds no BAM: the calls made from the retracted one are retracted too
    with pytest.raises(InputError, match="no aligned BAM"):
        call_sample(store, BUCKETS, SAMPLE, None, "run-1")
    assert catalog.committed_files(store, BUCKETS.curated, "variants") == []
    assert all(store.head(BUCKETS.curated, k) is None for k in called.outputs)
    call_tomb = read_manifest(store, BUCKETS.curated, called.manifest_key)
    assert call_tomb is not None and call_tomb["status"] == "retracted"

    # no curated manifest names an ingest object by key, in either outcome
    for body in _curated_manifests(store):
        for name in ("P1-T_R1.fastq.gz", "P1-T_R2.fastq.gz", "fastq/"):
            assert name.encode() not in body
