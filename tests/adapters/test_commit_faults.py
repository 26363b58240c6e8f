"""The manifest protocol under faults: undo, verified skips, code versions, tombstones."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from oncopipe import catalog, manifest
from oncopipe.errors import ConfigError, InputError
from oncopipe.manifest import (
    StepContext,
    committed_outputs,
    compatibility_version,
    iter_manifests,
    manifest_key,
    process_item,
    read_manifest,
)
from oncopipe.pseudonym import object_ref
from oncopipe.storage import ObjectStore
from tests.conftest import make_bucket

SECRET = bytes(range(32))
CURATED = "curated-zone"
INGEST = "ingest-zone"
QUARANTINE = "quarantine-zone"
TABLE_KEY = "genomics/variants/pk-aaaaaaaaaaaaaaaa/S1.parquet"


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    for name in (CURATED, INGEST, QUARANTINE):
        make_bucket(s3, name)
    return ObjectStore(s3)


def _ctx(store: ObjectStore, **extra: Any) -> StepContext:
    return StepContext(store=store, manifest_bucket=CURATED, run_id="run-1", step="call",
                       params={"caller": "v1"}, key_secret=SECRET, **extra)  # fmt: skip


def _input(
    store: ObjectStore, body: bytes = b"ACGT", key: str = "fastq/Jane_Doe_R1.fastq.gz"
) -> Any:
    store.put_bytes(INGEST, key, body, tags={})
    ref = store.head(INGEST, key)
    assert ref is not None
    return ref


def _parquet(value: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"pos": [value]}), buffer)
    return buffer.getvalue()


def _writes(*pairs: tuple[str, bytes]) -> Any:
    def work(w: Any) -> dict[str, Any]:
        for key, data in pairs:
            w.put(CURATED, key, data)
        return {"status": "called"}

    return work


class FailingStore(ObjectStore):
    """A store whose writes of keys holding a part fail (a manifest or symlink PUT refused)."""

    def __init__(self, client: Any, failing_part: str) -> None:
        super().__init__(client)
        self.failing_part = failing_part

    def put_bytes(self, bucket: str, key: str, data: bytes, **kwargs: Any) -> Any:
        if self.failing_part in key:
            raise ConnectionError("write refused")
        return super().put_bytes(bucket, key, data, **kwargs)


# -- a failed commit removes the item's outputs ------------------------------------------------
@pytest.mark.parametrize("failing", [manifest.MANIFEST_ROOT + "/run-1/", catalog.SYMLINK_DIR])
def test_failed_manifest_or_symlink_write_removes_the_outputs(
    store: ObjectStore, failing: str
) -> None:
    broken = FailingStore(store.client, failing)
    ref = _input(store)
    with pytest.raises(ConnectionError):
        process_item(_ctx(broken), "S1", [ref], _writes((TABLE_KEY, _parquet(1))))
    assert store.head(CURATED, TABLE_KEY) is None  # no uncommitted Parquet left for Athena
    assert store.head(CURATED, manifest_key("run-1", "call", "S1")) is None
    assert catalog.committed_files(store, CURATED, "variants") == []
    assert process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1)))).status == (
        "done"
    )
    assert catalog.committed_files(store, CURATED, "variants") == [TABLE_KEY]


def test_failed_redo_restores_the_previous_commit(store: ObjectStore) -> None:
    ref = _input(store)
    process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1))))
    committed = store.head(CURATED, TABLE_KEY)
    manifest_before = store.head(CURATED, manifest_key("run-1", "call", "S1"))
    broken = FailingStore(store.client, manifest.MANIFEST_ROOT + "/run-1/")
    new_ref = _input(store, b"ACGTACGT")
    with pytest.raises(ConnectionError):
        process_item(_ctx(broken), "S1", [new_ref], _writes((TABLE_KEY, _parquet(2))))
    current = store.head(CURATED, TABLE_KEY)
    assert current is not None and committed is not None and current.etag == committed.etag
    assert store.head(CURATED, manifest_key("run-1", "call", "S1")) == manifest_before
    # the restored bytes count as the committed output: the old inputs still skip
    assert process_item(_ctx(store), "S1", [ref], _writes()).status == "skipped"


# -- one item's failure never hides another item's committed output ------------------------------
def test_second_writer_failing_leaves_the_first_committed_output_current(
    store: ObjectStore,
) -> None:
    shared = "genomics/variants/pk-aaaaaaaaaaaaaaaa/shared.parquet"
    ref = _input(store)
    process_item(_ctx(store), "A", [ref], _writes((shared, b"from A")))
    committed = store.head(CURATED, shared)

    def overwrite_then_fail(w: Any) -> None:
        w.put(CURATED, shared, b"from B")
        raise RuntimeError("B crashed")

    with pytest.raises(RuntimeError, match="B crashed"):
        process_item(_ctx(store), "B", [ref], overwrite_then_fail)
    assert store.get_bytes(CURATED, shared) == b"from A"
    current = store.head(CURATED, shared)
    assert current is not None and committed is not None and current.etag == committed.etag
    assert process_item(_ctx(store), "A", [ref], _writes()).status == "skipped"


def test_earlier_writer_failing_after_a_later_commit_leaves_it_alone(store: ObjectStore) -> None:
    shared = "genomics/variants/pk-aaaaaaaaaaaaaaaa/shared.parquet"
    ref = _input(store)

    def write_let_a_commit_then_fail(w: Any) -> None:
        w.put(CURATED, shared, b"from B")
        process_item(_ctx(store), "A", [ref], _writes((shared, b"from A")))  # meanwhile
        raise RuntimeError("B crashed")

    with pytest.raises(RuntimeError):
        process_item(_ctx(store), "B", [ref], write_let_a_commit_then_fail)
    versions = store.versions(CURATED, shared, limit=5)
    assert not versions[0].delete_marker  # B placed no delete marker over A's version
    assert store.get_bytes(CURATED, shared) == b"from A"


def test_conditional_delete_refuses_a_changed_object(store: ObjectStore) -> None:
    first = store.put_bytes(CURATED, "k", b"one", tags={})
    store.put_bytes(CURATED, "k", b"two", tags={})
    from oncopipe.storage import PreconditionFailed

    with pytest.raises(PreconditionFailed):
        store.delete(CURATED, "k", if_match=first.etag)
    assert store.get_bytes(CURATED, "k") == b"two"


# -- a skip verifies the outputs it trusts -------------------------------------------------------
@pytest.mark.parametrize("damage", ["delete", "overwrite"])
def test_skip_redoes_an_item_whose_output_is_gone_or_replaced(
    store: ObjectStore, damage: str
) -> None:
    ref = _input(store)
    calls: list[int] = []

    def work(w: Any) -> dict[str, Any]:
        calls.append(1)
        w.put(CURATED, TABLE_KEY, _parquet(1))
        return {}

    process_item(_ctx(store), "S1", [ref], work)
    if damage == "delete":
        store.delete(CURATED, TABLE_KEY)  # a delete marker: the recorded version is noncurrent
    else:
        store.put_bytes(CURATED, TABLE_KEY, b"someone else", tags={})
    assert process_item(_ctx(store), "S1", [ref], work).status == "done"
    assert calls == [1, 1]
    assert store.get_bytes(CURATED, TABLE_KEY) == _parquet(1)
    assert process_item(_ctx(store), "S1", [ref], work).status == "skipped"


def test_skip_rewrites_a_missing_symlink_file(store: ObjectStore) -> None:
    ref = _input(store)
    process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1))))
    document = read_manifest(store, CURATED, manifest_key("run-1", "call", "S1"))
    assert document is not None
    link = document["tables"]["variants"]
    store.delete(CURATED, link)  # killed between the manifest and its symlink file
    assert catalog.committed_files(store, CURATED, "variants") == []
    assert process_item(_ctx(store), "S1", [ref], _writes()).status == "skipped"
    assert catalog.committed_files(store, CURATED, "variants") == [TABLE_KEY]


# -- the code version takes part in the match -----------------------------------------------------
@pytest.mark.parametrize(
    ("version", "expected"),
    [("0.1.0", "0.1"), ("0.1.9+abc123", "0.1"), ("0.2.0", "0.2"), ("1.4.2", "1"),
     ("2.0.0rc1", "2"), ("v3.1", "3"), ("garbage", "")],
)  # fmt: skip
def test_compatibility_version(version: str, expected: str) -> None:
    assert compatibility_version(version) == expected


@pytest.mark.parametrize(("new_version", "status"),
                         [("0.1.7", "skipped"), ("0.2.0", "done"), ("1.0.0", "done")])  # fmt: skip
def test_a_minor_0x_or_major_code_change_reprocesses_a_patch_does_not(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch, new_version: str, status: str
) -> None:
    ref = _input(store)
    monkeypatch.setattr(manifest, "__version__", "0.1.0")
    process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1))))
    document = read_manifest(store, CURATED, manifest_key("run-1", "call", "S1"))
    assert document is not None and document["code_compat"] == "0.1"
    monkeypatch.setattr(manifest, "__version__", new_version)
    assert process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1)))).status == (
        status
    )


# -- a re-upload that now fails retracts what the previous version committed ----------------------
def test_input_error_on_redo_writes_a_tombstone_and_retracts_outputs(store: ObjectStore) -> None:
    ref = _input(store)
    other = "genomics/vcf/pk-aaaaaaaaaaaaaaaa/S1.vcf.gz"
    process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1)), (other, b"vcf")))
    assert catalog.committed_files(store, CURATED, "variants") == [TABLE_KEY]
    bad = _input(store, b"not a fastq")

    def reject(w: Any) -> None:
        raise InputError(bad.key, "truncated")

    with pytest.raises(InputError):
        process_item(_ctx(store), "S1", [bad], reject)
    assert store.head(CURATED, TABLE_KEY) is None and store.head(CURATED, other) is None
    tomb = read_manifest(store, CURATED, manifest_key("run-1", "call", "S1"))
    assert tomb is not None and tomb["status"] == "retracted"
    assert tomb["error"]["reason_code"] == "invalid-input"
    assert {r["key"] for r in tomb["retracted"]} == {TABLE_KEY, other}
    assert catalog.committed_files(store, CURATED, "variants") == []
    assert committed_outputs(store, CURATED, "run-1") == []
    assert list(iter_manifests(store, CURATED, "run-1")) == []
    assert len(list(iter_manifests(store, CURATED, "run-1", include_retracted=True))) == 1
    # the valid bytes again: processed again (a raised tombstone never matches)
    good = _input(store)
    assert process_item(_ctx(store), "S1", [good], _writes((TABLE_KEY, _parquet(1)))).status == (
        "done"
    )
    assert catalog.committed_files(store, CURATED, "variants") == [TABLE_KEY]


def test_quarantined_redo_retracts_outputs_and_skips_afterwards(store: ObjectStore) -> None:
    ref = _input(store)
    process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1))))
    bad = _input(store, b"broken")

    def quarantine(w: Any) -> dict[str, Any]:
        w.reject("invalid-fastq")
        w.put(QUARANTINE, f"run-1/{bad.key}", b"broken")
        return {"status": "quarantined", "reason_code": "invalid-fastq",
                "reason": f"{bad.key}: read 3 truncated"}  # fmt: skip

    result = process_item(_ctx(store), "S1", [bad], quarantine)
    assert store.head(CURATED, TABLE_KEY) is None
    tomb = read_manifest(store, CURATED, result.manifest_key)
    assert tomb is not None and tomb["status"] == "retracted"
    assert tomb["reason_code"] == "invalid-fastq"
    assert catalog.committed_files(store, CURATED, "variants") == []
    assert process_item(_ctx(store), "S1", [bad], quarantine).status == "skipped"


def test_redo_with_other_output_keys_retracts_the_old_ones(store: ObjectStore) -> None:
    ref = _input(store)
    old_key = "genomics/variants/pk-aaaaaaaaaaaaaaaa/S1.parquet"
    new_key = "genomics/variants/pk-bbbbbbbbbbbbbbbb/S1.parquet"  # the patient changed
    process_item(_ctx(store), "S1", [ref], _writes((old_key, _parquet(1))))
    new_ref = _input(store, b"ACGTTT")
    process_item(_ctx(store), "S1", [new_ref], _writes((new_key, _parquet(2))))
    assert store.head(CURATED, old_key) is None
    assert catalog.committed_files(store, CURATED, "variants") == [new_key]


# -- readers see only committed outputs -----------------------------------------------------------
def test_uncommitted_parquet_is_in_no_table(store: ObjectStore) -> None:
    ref = _input(store)
    process_item(_ctx(store), "S1", [ref], _writes((TABLE_KEY, _parquet(1))))
    leftover = "genomics/variants/pk-cccccccccccccccc/killed.parquet"
    store.put_bytes(CURATED, leftover, _parquet(9), tags={})  # a killed item's partial output
    assert catalog.committed_files(store, CURATED, "variants") == [TABLE_KEY]
    table = catalog.glue_table_input(catalog.TABLES["variants"], CURATED)
    descriptor: Any = table["StorageDescriptor"]
    assert descriptor["InputFormat"] == catalog.SYMLINK_INPUT
    assert descriptor["Location"] == f"s3://{CURATED}/{catalog.symlink_prefix('variants')}"
    assert descriptor["SerdeInfo"]["SerializationLibrary"] == catalog.PARQUET_SERDE
    link = next(iter(store.list_keys(CURATED, catalog.symlink_prefix("variants"))))
    assert store.get_bytes(CURATED, link) == f"s3://{CURATED}/{TABLE_KEY}\n".encode()
    assert store.get_tags(CURATED, link) == {"run-id": "run-1", "step": "call"}


def test_every_table_is_a_symlink_table_beside_its_data() -> None:
    for spec in catalog.TABLES.values():
        descriptor: Any = catalog.glue_table_input(spec, CURATED)["StorageDescriptor"]
        assert descriptor["InputFormat"] == catalog.SYMLINK_INPUT
        assert descriptor["Location"] == f"s3://{CURATED}/{spec.prefix}_symlinks/"
        assert descriptor["SerdeInfo"]["SerializationLibrary"] == spec.serde
        # a symlink file is never taken for a data file of its table
        assert catalog.table_for_key(f"{spec.prefix}_symlinks/run-1.abc.json") is None
    assert catalog.table_for_key("notes/concepts/pk-x/n.parquet") is catalog.NOTE_CONCEPTS
    assert catalog.table_for_key("notes/scrubbed/pk-x/n.txt") is None
    assert catalog.table_for_key("genomics/vcf/pk-x/S1.vcf.gz") is None
    assert catalog.table_for_key("cohort/dataset/b1/_preprocess.json") is None
    assert catalog.table_for_key("cohort/samples/run-1/obj-x.jsonl") is catalog.SAMPLES


def test_a_symlink_file_naming_a_foreign_file_is_refused(store: ObjectStore) -> None:
    link = catalog.symlink_prefix("variants") + "forged.txt"
    store.put_bytes(CURATED, link, b"s3://elsewhere/genomics/variants/x.parquet\n", tags={})
    with pytest.raises(catalog.CatalogError, match=r"forged.txt, line 1: not a data file"):
        catalog.committed_files(store, CURATED, "variants")


# -- opaque inputs in curated manifests ----------------------------------------------------------
def test_curated_manifest_names_other_buckets_objects_by_reference_only(
    store: ObjectStore,
) -> None:
    ref = _input(store, key="fastq/Jane_Doe_R1.fastq.gz")

    def quarantine(w: Any) -> dict[str, Any]:
        w.put(QUARANTINE, f"run-1/{ref.key}", b"copy")
        return {"status": "quarantined", "reason_code": "invalid-fastq",
                "reason": f"{ref.key}: read 1 truncated", "details": [ref.key]}  # fmt: skip

    result = process_item(_ctx(store), ref.key, [ref], quarantine)
    body = store.get_bytes(CURATED, result.manifest_key)
    assert b"Jane_Doe" not in body and "Jane_Doe" not in result.manifest_key
    assert "Jane_Doe" not in repr(result.summary)
    document = read_manifest(store, CURATED, result.manifest_key)
    assert document is not None
    token = object_ref(SECRET, ref.key)
    assert document["inputs"][0]["ref"] == token and document["summary"]["details"] == [token]
    # the match compares (bucket, reference, ETag): a rerun skips, other bytes redo
    assert process_item(_ctx(store), ref.key, [ref], quarantine).status == "skipped"


def test_curated_manifest_without_the_secret_is_refused_before_any_work(
    store: ObjectStore,
) -> None:
    ref = _input(store)
    ctx = StepContext(store=store, manifest_bucket=CURATED, run_id="run-1", step="align")
    calls: list[int] = []
    with pytest.raises(ConfigError, match="pseudonymisation secret") as caught:
        process_item(ctx, "S1", [ref], lambda w: calls.append(1) or {})
    assert calls == [] and "Jane_Doe" not in str(caught.value)


def test_phi_zone_manifest_keeps_keys(store: ObjectStore) -> None:
    ref = _input(store)
    ctx = StepContext(store=store, manifest_bucket=QUARANTINE, run_id="run-1", step="route",
                      phi_zone=True)  # fmt: skip
    result = process_item(ctx, ref.key, [ref], lambda w: {"status": "received"})
    document = read_manifest(store, QUARANTINE, result.manifest_key)
    assert document is not None and document["inputs"][0]["key"] == ref.key


class NoVersionListing(ObjectStore):
    """A role without s3:ListBucketVersions (what a grant may leave out)."""

    def versions(self, bucket: str, key: str, limit: int = 2) -> Any:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}},
                          "ListObjectVersions")  # fmt: skip


def test_undo_without_version_listing_still_removes_only_its_own_version(
    store: ObjectStore,
) -> None:
    limited = NoVersionListing(store.client)
    ref = _input(store)
    shared = "genomics/variants/pk-aaaaaaaaaaaaaaaa/shared.parquet"

    def fail(w: Any) -> None:
        w.put(CURATED, TABLE_KEY, b"partial")
        w.put(CURATED, shared, b"from B")
        store.put_bytes(CURATED, shared, b"from A", tags={})  # another writer, meanwhile
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        process_item(_ctx(limited), "S1", [ref], fail)
    assert store.head(CURATED, TABLE_KEY) is None  # ours: a delete marker
    assert store.get_bytes(CURATED, shared) == b"from A"  # not ours any more: left alone
