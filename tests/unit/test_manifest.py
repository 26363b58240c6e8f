"""Manifests as commit records: finished items are skipped, interrupted ones redone."""

from __future__ import annotations

import json
import multiprocessing
import os
from typing import Any

import pytest

from oncopipe.manifest import (
    StepContext,
    committed_outputs,
    manifest_key,
    process_item,
    read_manifest,
    run_manifests,
)
from oncopipe.pseudonym import object_ref
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32))


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    make_bucket(s3, "curated-zone")
    make_bucket(s3, "ingest-zone")
    return ObjectStore(s3)


def _ctx(store: ObjectStore, params: dict[str, Any] | None = None) -> StepContext:
    return StepContext(
        store=store, manifest_bucket="curated-zone", run_id="run-1", step="align",
        params=params or {"threads": 2}, key_secret=SECRET,
    )  # fmt: skip


def _input(store: ObjectStore, body: bytes = b"ACGT") -> Any:
    store.put_bytes("ingest-zone", "fastq/S1_R1.fastq.gz", body, tags={})
    ref = store.head("ingest-zone", "fastq/S1_R1.fastq.gz")
    assert ref is not None
    return ref


def test_outputs_then_manifest_with_tags_and_checksums(store: ObjectStore) -> None:
    ref = _input(store)
    result = process_item(
        _ctx(store), "S1", [ref], lambda w: w.put("curated-zone", "genomics/S1.bam", b"BAM") and {}
    )
    assert result.status == "done"
    manifest = read_manifest(store, "curated-zone", manifest_key("run-1", "align", "S1"))
    assert manifest is not None
    # the ingest object is named by opaque reference only (its key can name a patient)
    assert manifest["inputs"][0]["ref"] == object_ref(SECRET, "fastq/S1_R1.fastq.gz")
    assert "key" not in manifest["inputs"][0]
    assert b"S1_R1" not in store.get_bytes("curated-zone", manifest_key("run-1", "align", "S1"))
    assert manifest["status"] == "committed"
    assert manifest["outputs"][0]["key"] == "genomics/S1.bam"
    assert manifest["outputs"][0]["sha256"] == __import__("hashlib").sha256(b"BAM").hexdigest()
    assert manifest["code_version"].startswith("0.1.0+")
    for key in ("genomics/S1.bam", manifest_key("run-1", "align", "S1")):
        assert store.get_tags("curated-zone", key) == {"run-id": "run-1", "step": "align"}
    assert committed_outputs(store, "curated-zone", "run-1") == manifest["outputs"]


def test_finished_item_is_skipped_and_changes_nothing(store: ObjectStore) -> None:
    ref = _input(store)
    calls: list[int] = []

    def work(w: Any) -> dict[str, Any]:
        calls.append(1)
        w.put("curated-zone", "genomics/S1.bam", b"BAM")
        return {"reads": 10}

    process_item(_ctx(store), "S1", [ref], work)
    key = manifest_key("run-1", "align", "S1")
    before = store.head("curated-zone", key)
    again = process_item(_ctx(store), "S1", [ref], work)
    assert again.status == "skipped"
    assert again.summary == {"reads": 10}
    assert calls == [1]
    assert store.head("curated-zone", key) == before  # same version: nothing rewritten


def test_changed_input_or_parameters_redo_the_item(store: ObjectStore) -> None:
    ref = _input(store)
    process_item(_ctx(store), "S1", [ref], lambda w: {})
    new_ref = _input(store, b"ACGTACGT")
    assert process_item(_ctx(store), "S1", [new_ref], lambda w: {}).status == "done"
    changed = _ctx(store, {"threads": 4})
    assert process_item(changed, "S1", [new_ref], lambda w: {}).status == "done"


def test_failed_item_leaves_no_manifest_and_no_partial_output(store: ObjectStore) -> None:
    ref = _input(store)

    def half_then_fail(w: Any) -> None:
        w.put("curated-zone", "genomics/S1.bam", b"half")
        raise RuntimeError("aligner crashed")

    with pytest.raises(RuntimeError, match="aligner crashed"):
        process_item(_ctx(store), "S1", [ref], half_then_fail)
    assert store.head("curated-zone", manifest_key("run-1", "align", "S1")) is None
    assert store.head("curated-zone", "genomics/S1.bam") is None
    redo = process_item(_ctx(store), "S1", [ref], lambda w: {})
    assert redo.status == "done"


def _align_then_get_killed(endpoint: str) -> None:  # runs in a child process
    import signal

    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="eu-west-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    store = ObjectStore(client)
    ref = store.head("ingest-zone", "fastq/S1_R1.fastq.gz")

    def work(w: Any) -> None:
        w.put("curated-zone", "genomics/S1.bam", b"partial")
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-item: no cleanup, no manifest

    process_item(_ctx(store), "S1", [ref], work)


def test_killed_item_leaves_no_manifest_and_is_redone(aws_env: None) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from oncopipe.local.server import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1")
        make_bucket(client, "curated-zone")
        make_bucket(client, "ingest-zone")
        store = ObjectStore(client)
        ref = _input(store)
        child = multiprocessing.get_context("spawn").Process(
            target=_align_then_get_killed, args=(endpoint,)
        )
        child.start()
        child.join(60)
        assert child.exitcode == -9  # SIGKILL
        assert store.head("curated-zone", manifest_key("run-1", "align", "S1")) is None
        assert store.get_bytes("curated-zone", "genomics/S1.bam") == b"partial"

        def finish(w: Any) -> dict[str, Any]:
            w.put("curated-zone", "genomics/S1.bam", b"full")
            return {}

        assert process_item(_ctx(store), "S1", [ref], finish).status == "done"
        assert store.get_bytes("curated-zone", "genomics/S1.bam") == b"full"
        assert process_item(_ctx(store), "S1", [ref], finish).status == "skipped"
    finally:
        server.stop()


def test_manifest_is_json_with_parameters_hash(store: ObjectStore) -> None:
    ref = _input(store)
    process_item(_ctx(store), "sample/with spaces", [ref], lambda w: {})
    key = manifest_key("run-1", "align", "sample/with spaces")
    assert key.startswith("_manifests/run-1/align/sample_with_spaces-")
    document = json.loads(store.get_bytes("curated-zone", key))
    assert len(document["params_hash"]) == 64


def test_bad_run_id_refused(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="invalid run id"):
        StepContext(store=store, manifest_bucket="curated-zone", run_id="../x", step="s")


def test_run_manifests_reads_typed_records_and_counts_broken_ones(store: ObjectStore) -> None:
    ref = _input(store)

    def align(writer: Any) -> dict[str, Any]:
        writer.put("curated-zone", "genomics/S1.bam", b"BAM")
        return {"status": "aligned"}

    process_item(_ctx(store), "S1", [ref], align)

    def refuse(writer: Any) -> dict[str, Any]:
        writer.reject("bad-input")
        return {"status": "quarantined", "reason_code": "bad-input"}

    process_item(_ctx(store), "S2", [ref], refuse)
    (done,) = run_manifests(store, "curated-zone", "run-1", "align")
    assert (done.item, done.status, done.committed) == ("S1", "aligned", True)
    assert [o["key"] for o in done.outputs] == ["genomics/S1.bam"]
    every = run_manifests(store, "curated-zone", "run-1", "align", include_retracted=True)
    assert {(r.item, r.status, r.committed) for r in every} == {
        ("S1", "aligned", True), ("S2", "quarantined", False)}  # fmt: skip
    assert run_manifests(store, "curated-zone", "run-1", "call") == []  # another step: none

    broken = manifest_key("run-1", "align", "S3")
    store.put_bytes("curated-zone", broken, b"{not json", tags={})
    with pytest.raises(ValueError):
        run_manifests(store, "curated-zone", "run-1", "align")
    unreadable: list[str] = []
    assert len(run_manifests(store, "curated-zone", "run-1", "align", unreadable=unreadable)) == 1
    assert unreadable == [broken]
