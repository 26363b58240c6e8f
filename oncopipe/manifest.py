"""Manifests: the commit record of every item a stage processes.

A stage writes an item's outputs first and its manifest last, at
``_manifests/<run-id>/<step>/<item>.json``, then the item's symlink files (one per curated
table it has data in, :mod:`oncopipe.catalog`): readers see only outputs a committed
manifest names, Athena included.

Statuses. ``committed``: the outputs are the item's result. ``retracted`` (a tombstone):
the item's input was rejected (quarantined, or ``work`` raised an
:class:`~oncopipe.errors.InputError`); nothing it names is curated output, and what its
previous manifest had committed is listed under ``retracted`` and removed. Readers skip
tombstones (:func:`iter_manifests`, :func:`committed_outputs`).

Resume. A re-run skips an item whose manifest matches: same inputs (bucket, key or opaque
reference, ETag: the same content; the version is recorded too), same parameters hash and
the same *compatible* code version (below), and whose outputs are still there (each is the
current version it recorded, or has its ETag). Anything else redoes the item; outputs of the
previous commit that the new one does not rewrite are retracted.

Code-version policy. The manifest records ``code_version`` (package version + hash of the
sources) but matches on :func:`compatibility_version` only: the major version, or
major.minor while the major is 0 (semver for 0.x). A patch release (0.1.0 -> 0.1.1) or a
source change without a version bump skips finished items; 0.1 -> 0.2 (or 1.x -> 2.0)
reprocesses everything. A change to what a stage computes is either a parameter of the
stage (its parameters hash: aligner, caller settings, profile, ``notes-v1``...) or a minor
(0.x) / major version bump.

Faults. A failed item (``work`` raises, the manifest or a symlink write fails) undoes what
it wrote: for each key, only if its current version is still the one this item wrote, the
version before it is made current again (a copy), or a delete marker is placed where there
was none. So one item's failure never hides another item's committed output with the same
key, and stage roles need no ``s3:DeleteObjectVersion``: noncurrent versions expire by
lifecycle. The check is a HEAD (or a version listing) then a write conditional on the ETag
(``If-Match``) where S3 supports it; without the condition a write by another item between
the check and the undo is the remaining race. A killed item leaves no manifest and is redone.

Opaque inputs. A manifest outside the PHI zone (``StepContext.phi_zone`` False: curated)
never names an object of another bucket by key: ingest keys can name patients. Such objects
are recorded as ``{"bucket", "ref", "etag", "size", "version_id", "sha256"}`` with ``ref`` =
:func:`oncopipe.pseudonym.object_ref`, and their keys are replaced by the reference in the
item name and summary.

Cost. In a job metered by :func:`oncopipe.ops.cost.metering` (the Batch and SageMaker
adapters), each manifest also has an optional ``cost`` field: the item's estimated cost
(:meth:`oncopipe.ops.cost.JobProfile.item_fields`: USD, vCPU- and GiB-seconds, lifecycle,
instance type, price date). ``oncopipe ops cost`` sums it per stage and sample.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from oncopipe import __version__, catalog
from oncopipe.errors import ConfigError, InputError
from oncopipe.runs import code_version, item_slug, params_hash, validate_run_id
from oncopipe.storage import (
    TAG_RUN_ID,
    TAG_STEP,
    ObjectRef,
    ObjectStore,
    PreconditionFailed,
    is_access_denied,
)

logger = logging.getLogger(__name__)

MANIFEST_ROOT = "_manifests"
SCHEMA_VERSION = 2
COMMITTED = "committed"
RETRACTED = "retracted"
_RELEASE = re.compile(r"^\s*v?(\d+)(?:\.(\d+))?")


def manifest_key(run_id: str, step: str, item: str) -> str:
    """Return the key of an item's manifest."""
    return f"{MANIFEST_ROOT}/{run_id}/{step}/{item_slug(item)}.json"


def compatibility_version(version: str) -> str:
    """Return the part of a code version that takes part in the resume match.

    ``"0.1.3+abc"`` -> ``"0.1"``, ``"2.4.0"`` -> ``"2"`` (module docstring). Hand-parsed
    rather than with ``packaging``: only the release's first two numbers matter and the
    workload bundles do not ship ``packaging``.

    Returns:
        The compatibility version, or ``""`` for a version that does not start with a
        number (which then never matches a parsed one).
    """
    found = _RELEASE.match(version or "")
    if not found:
        return ""
    major, minor = found.group(1), found.group(2) or "0"
    return f"0.{minor}" if major == "0" else major


@dataclass(frozen=True)
class StepContext:
    """What every item of one step in one run shares.

    ``phi_zone``: the manifests live in a PHI zone (quarantine) and may name ingest keys;
    otherwise objects of other buckets are recorded by opaque reference, made with
    ``key_secret`` (the pseudonymisation secret). ``tables_bucket``: the curated bucket
    whose tables this step's outputs feed (default: the manifest bucket outside the PHI
    zone, none in it).
    """

    store: ObjectStore
    manifest_bucket: str
    run_id: str
    step: str
    params: Mapping[str, Any] = field(default_factory=dict)
    key_secret: bytes | None = field(default=None, repr=False)
    phi_zone: bool = False
    tables_bucket: str | None = None

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_RUN_ID: self.run_id, TAG_STEP: self.step}

    @property
    def curated_bucket(self) -> str | None:
        """Return the bucket whose tables get this step's symlink files (None: no tables)."""
        if self.tables_bucket:
            return self.tables_bucket
        return None if self.phi_zone else self.manifest_bucket

    def opaque(self, obj: ObjectRef) -> bool:
        """Return True when ``obj`` is recorded by reference, not key, in this step's manifests."""
        return not self.phi_zone and obj.bucket != self.manifest_bucket

    def record(self, obj: ObjectRef) -> dict[str, Any]:
        """Return how a manifest of this step records an object (key or opaque reference).

        Raises:
            ConfigError: the object needs an opaque reference and there is no secret.
        """
        if not self.opaque(obj):
            return obj.as_dict()
        return {"bucket": obj.bucket, "ref": self.reference(obj.key), "etag": obj.etag,
                "size": obj.size, "version_id": obj.version_id, "sha256": obj.sha256}  # fmt: skip

    def reference(self, key: str) -> str:
        """Return the opaque reference of a key (see :func:`oncopipe.pseudonym.object_ref`).

        Raises:
            ConfigError: no ``key_secret``.
        """
        from oncopipe.pseudonym import object_ref

        if self.key_secret is None:
            raise ConfigError(
                f"step {self.step}: its manifests in s3://{self.manifest_bucket} name objects "
                "of another bucket, which needs the pseudonymisation secret (key_secret) for "
                "opaque references; pass it, or phi_zone=True for a PHI-zone manifest bucket"
            )
        return object_ref(self.key_secret, key)


@dataclass
class _Written:
    """One write of an item, to undo if the item fails."""

    bucket: str
    key: str
    version_id: str | None
    etag: str
    delete_marker: bool = False


class ItemWriter:
    """Writes one item's outputs, tagged with the run and step, and remembers them.

    ``outputs`` are what the manifest will name; every write (manifest and symlink files
    too) is remembered so that :meth:`discard` can undo it.
    """

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx
        self.outputs: list[ObjectRef] = []
        self.rejection: str | None = None
        self._written: list[_Written] = []

    def _remember(self, ref: ObjectRef) -> ObjectRef:
        self._written.append(_Written(ref.bucket, ref.key, ref.version_id, ref.etag))
        return ref

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
    ) -> ObjectRef:
        ref = self._remember(self._ctx.store.put_bytes(
            bucket, key, data, tags=self._ctx.tags, content_type=content_type
        ))  # fmt: skip
        self.outputs.append(ref)
        return ref

    def put_json(self, bucket: str, key: str, document: Any) -> ObjectRef:
        data = json.dumps(document, indent=2, sort_keys=True, default=str).encode("utf-8")
        return self.put(bucket, key, data, content_type="application/json")

    def upload_file(self, path: str, bucket: str, key: str) -> ObjectRef:
        """Upload a local file as an output (BAMs and other large results)."""
        ref = self._remember(self._ctx.store.upload_file(path, bucket, key, tags=self._ctx.tags))
        self.outputs.append(ref)
        return ref

    def copy(self, src: ObjectRef, bucket: str, key: str) -> ObjectRef:
        self._ctx.store.copy(
            src.bucket, src.key, bucket, key, tags=self._ctx.tags, version_id=src.version_id
        )
        ref = self._ctx.store.head(bucket, key)
        if ref is None:  # pragma: no cover - S3 read-after-write is strong
            raise RuntimeError(f"copy to s3://{bucket} is not visible")
        self._remember(ref)
        self.outputs.append(ref)
        return ref

    def reject(self, reason_code: str) -> None:
        """Mark the item's input as rejected (quarantined): its manifest is a tombstone."""
        self.rejection = reason_code

    # -- commit records (not outputs) --------------------------------------------------------
    def _put_record(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self._remember(self._ctx.store.put_bytes(
            bucket, key, data, tags=self._ctx.tags, content_type=content_type
        ))  # fmt: skip

    def _delete_record(self, bucket: str, key: str) -> None:
        current = self._ctx.store.head(bucket, key)
        if current is None:
            return
        marker = self._ctx.store.delete(bucket, key, if_match=current.etag)
        self._written.append(_Written(bucket, key, marker, "", delete_marker=True))

    def discard(self) -> None:
        """Undo what this item wrote, newest first (best effort: a kill leaves it to a re-run).

        A key whose current version is no longer this item's write is left alone.
        """
        for written in reversed(self._written):
            try:
                _undo(self._ctx.store, written)
            except Exception:  # noqa: BLE001 - cleanup must not hide the original error
                # keys can name patients (quarantine copies): name the bucket only
                logger.warning("could not undo a write of step %s in s3://%s",
                               self._ctx.step, written.bucket)  # fmt: skip
        self._written.clear()
        self.outputs.clear()


def _undo(store: ObjectStore, written: _Written) -> None:
    if written.version_id is None:  # unversioned bucket: delete only if still ours
        if not written.delete_marker:
            try:
                store.delete(written.bucket, written.key, if_match=written.etag)
            except PreconditionFailed:
                pass
        return
    try:
        newest = store.versions(written.bucket, written.key, limit=2)
    except Exception as e:
        if not is_access_denied(e):
            raise
        # no s3:ListBucketVersions: the version before ours is unknown; a delete marker
        # on our version (if still current) is what is left to do
        current = store.head(written.bucket, written.key)
        if current is not None and current.version_id == written.version_id:
            try:
                store.delete(written.bucket, written.key, if_match=current.etag)
            except PreconditionFailed:
                pass
        return
    if not newest or newest[0].version_id != written.version_id:
        return  # another writer came after us: ours is noncurrent already
    previous = newest[1] if len(newest) > 1 else None
    try:
        if previous is not None and not previous.delete_marker:
            old = store.head(written.bucket, written.key, previous.version_id)
            if old is not None:
                store.restore_version(written.bucket, written.key, previous.version_id,
                                      size=old.size, if_match=written.etag or None)  # fmt: skip
        elif not written.delete_marker:
            store.delete(written.bucket, written.key, if_match=written.etag)
    except PreconditionFailed:
        pass  # changed between the check and the write: leave it to its new writer


@dataclass(frozen=True)
class ItemResult:
    """The outcome of one item: ``done`` (processed now) or ``skipped`` (already done)."""

    item: str
    status: str
    manifest_key: str
    outputs: tuple[str, ...]
    summary: Mapping[str, Any]
    seconds: float


def read_manifest(store: ObjectStore, bucket: str, key: str) -> dict[str, Any] | None:
    """Return a manifest document, or None when it does not exist."""
    if store.head(bucket, key) is None:
        return None
    document: dict[str, Any] = json.loads(store.get_bytes(bucket, key))
    return document


def is_committed(document: Mapping[str, Any]) -> bool:
    """Return True unless a manifest is a tombstone (schema-1 manifests are commits)."""
    return document.get("status", COMMITTED) == COMMITTED


def _identity(record: Mapping[str, Any]) -> tuple[str, str, str]:
    # Content identity, not version: the same bytes uploaded again (a new version with
    # the same ETag) are not processed again; different bytes are.
    name = record.get("key") if "key" in record else "ref:" + str(record.get("ref"))
    return (str(record["bucket"]), str(name), str(record["etag"]))


def manifest_matches(
    document: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]], params: Mapping[str, Any]
) -> bool:
    """Return True when a manifest records exactly these inputs (as the step records
    them, :meth:`StepContext.record`), these parameters and a compatible code version.

    A tombstone of a raised input error never matches (the item is tried again).
    """
    if "error" in document:
        return False
    if compatibility_version(str(document.get("code_version", ""))) != compatibility_version(
        __version__
    ):
        return False
    recorded = document.get("inputs", [])
    return document.get("params_hash") == params_hash(params) and sorted(
        map(_identity, recorded)
    ) == sorted(map(_identity, inputs))


def outputs_intact(store: ObjectStore, document: Mapping[str, Any]) -> bool:
    """Return True when every output a manifest names by key is still current.

    Current means: the object's current version is the recorded one, or has the recorded
    ETag (the same bytes made current again by an undo). Outputs recorded by opaque
    reference cannot be looked up, and outputs the role may not read (a write-only grant)
    cannot be checked: both are trusted.
    """
    for output in document.get("outputs", []):
        if "key" not in output:
            continue
        try:
            current = store.head(str(output["bucket"]), str(output["key"]))
        except Exception as e:
            if is_access_denied(e):
                continue
            raise
        if current is None:
            return False
        if output.get("version_id") and current.version_id == output["version_id"]:
            continue
        if current.etag != output.get("etag"):
            return False
    return True


def _redact(value: Any, keys: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        for key in sorted(keys, key=len, reverse=True):
            if key in value:
                value = value.replace(key, keys[key])
        return value
    if isinstance(value, Mapping):
        return {k: _redact(v, keys) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, keys) for v in value]
    return value


def _tables(ctx: StepContext, outputs: Sequence[ObjectRef]) -> dict[str, list[str]]:
    bucket = ctx.curated_bucket
    found: dict[str, list[str]] = {}
    for output in outputs:
        spec = catalog.table_for_key(output.key) if output.bucket == bucket else None
        if spec is not None:
            found.setdefault(spec.name, []).append(output.key)
    return found


def _document_tables(
    ctx: StepContext, document: Mapping[str, Any], key: str
) -> dict[str, tuple[str, list[str]]]:
    """Return table -> (symlink key, data keys) of a committed manifest."""
    if not is_committed(document) or ctx.curated_bucket is None:
        return {}
    refs = [ObjectRef(bucket=str(o["bucket"]), key=str(o["key"]), etag="", size=0)
            for o in document.get("outputs", []) if "key" in o]  # fmt: skip
    return {name: (catalog.symlink_key(name, key), keys)
            for name, keys in _tables(ctx, refs).items()}  # fmt: skip


def _repair_tables(ctx: StepContext, document: Mapping[str, Any], key: str) -> None:
    # a kill between the manifest and its symlink files: write the missing ones
    bucket = ctx.curated_bucket
    for link, keys in _document_tables(ctx, document, key).values():
        try:
            missing = bool(bucket) and ctx.store.head(str(bucket), link) is None
        except Exception as e:
            if not is_access_denied(e):
                raise
            missing = False  # a write-only grant cannot check: the commit wrote it
        if missing and bucket:
            ctx.store.put_bytes(bucket, link, catalog.symlink_body(bucket, keys),
                                tags=ctx.tags, content_type="text/plain")  # fmt: skip


def _retract(ctx: StepContext, records: Sequence[Mapping[str, Any]]) -> None:
    """Place delete markers on previous outputs that are still the versions recorded."""
    for record in records:
        bucket, key = str(record["bucket"]), str(record["key"])
        try:
            current = ctx.store.head(bucket, key)
            if current is None:
                continue
            same = (record.get("version_id") and current.version_id == record["version_id"]) or (
                current.etag == record.get("etag")
            )
            if same:
                ctx.store.delete(bucket, key, if_match=current.etag)
        except PreconditionFailed:
            continue
        except Exception:  # noqa: BLE001 - the commit stands; the file is in no table
            logger.warning("could not retract a previous output of step %s in s3://%s",
                           ctx.step, bucket)  # fmt: skip


def _commit(
    ctx: StepContext,
    writer: ItemWriter,
    key: str,
    document: dict[str, Any],
    previous: Mapping[str, Any] | None,
) -> None:
    """Write the manifest, then the symlink files; undo all of the item's writes on failure."""
    bucket = ctx.curated_bucket
    tables = (
        {n: (catalog.symlink_key(n, key), keys) for n, keys in _tables(ctx, writer.outputs).items()}
        if document["status"] == COMMITTED
        else {}
    )
    stale = (
        _document_tables(ctx, previous, key) if previous is not None and is_committed(previous)
        else {}
    )  # fmt: skip
    document["tables"] = {name: link for name, (link, _) in sorted(tables.items())}
    body = json.dumps(document, indent=2, sort_keys=True, default=str).encode("utf-8")
    try:
        writer._put_record(ctx.manifest_bucket, key, body, "application/json")
        for link, keys in tables.values():
            assert bucket is not None
            writer._put_record(bucket, link, catalog.symlink_body(bucket, keys), "text/plain")
        for name, (link, _) in stale.items():
            if name not in tables and bucket is not None:
                writer._delete_record(bucket, link)
    except BaseException:
        writer.discard()
        raise


def _stale_outputs(
    previous: Mapping[str, Any] | None, outputs: Sequence[ObjectRef]
) -> list[dict[str, Any]]:
    if previous is None or not is_committed(previous):
        return []
    rewritten = {(o.bucket, o.key) for o in outputs}
    return [dict(o) for o in previous.get("outputs", [])
            if "key" in o and (o["bucket"], o["key"]) not in rewritten]  # fmt: skip


#: The running job's cost profile (JSON); the same name as ``oncopipe.ops.cost.ENV_COST_PROFILE``
#: (repeated here so that a stage which is not metered never imports the cost module).
COST_PROFILE_ENV = "ONCOPIPE_COST_PROFILE"


def _cost_field(item_seconds: float) -> dict[str, Any]:
    """Return ``{"cost": ...}`` for a manifest written in a metered job, else ``{}``.

    Optional and additive: readers that do not know it ignore it; it takes no part in the
    resume match. See :func:`oncopipe.ops.cost.metering`.
    """
    if not os.environ.get(COST_PROFILE_ENV):
        return {}
    from oncopipe.ops.cost import item_cost

    fields = item_cost(item_seconds)
    return {} if fields is None else {"cost": fields}


def process_item(
    ctx: StepContext,
    item: str,
    inputs: Sequence[ObjectRef],
    work: Callable[[ItemWriter], Mapping[str, Any] | None],
) -> ItemResult:
    """Run ``work`` for one item unless a matching manifest says it is done.

    ``work`` writes its outputs through the :class:`ItemWriter` it receives and may return
    a small JSON-able summary (counts, a status) that goes into the manifest. It must not
    put PHI in that summary (outside the PHI zone, the keys of other buckets' objects are
    replaced by their opaque references anyway).

    Returns:
        The item's result; ``status`` is ``skipped`` when a matching manifest existed and
        its outputs were still there.

    Raises:
        ConfigError: the manifests need opaque references and the context has no secret.
        Whatever ``work`` raises, after the item's writes were undone; no manifest is
        written then, except a tombstone for an :class:`InputError` that retracts what the
        item's previous manifest committed. Whatever the manifest or symlink writes raise,
        after the same undo.
    """
    records = [ctx.record(i) for i in inputs]  # ConfigError before any work
    foreign = {i.key: ctx.reference(i.key) for i in inputs if ctx.opaque(i)}
    shown_item = _redact(item, foreign)
    key = manifest_key(ctx.run_id, ctx.step, shown_item)
    existing = read_manifest(ctx.store, ctx.manifest_bucket, key)
    if (
        existing is not None
        and manifest_matches(existing, records, ctx.params)
        and outputs_intact(ctx.store, existing)
    ):
        _repair_tables(ctx, existing, key)
        return ItemResult(
            item=item,
            status="skipped",
            manifest_key=key,
            outputs=tuple(str(o.get("key", o.get("ref"))) for o in existing.get("outputs", [])),
            summary=existing.get("summary", {}),
            seconds=0.0,
        )
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    writer = ItemWriter(ctx)

    def document(status: str, summary: Mapping[str, Any], outputs: Sequence[ObjectRef],
                 retracted: Sequence[Mapping[str, Any]]) -> dict[str, Any]:  # fmt: skip
        names = dict(foreign)
        for o in outputs:
            if ctx.opaque(o):
                names[o.key] = ctx.reference(o.key)
        return {
            "schema": SCHEMA_VERSION,
            "status": status,
            "run_id": ctx.run_id,
            "step": ctx.step,
            "item": shown_item,
            "inputs": records,
            "outputs": [ctx.record(o) for o in outputs],
            "retracted": [ctx.record(ObjectRef(**r)) if "key" in r else dict(r) for r in retracted],
            "params": _redact(dict(ctx.params), names),
            "params_hash": params_hash(ctx.params),
            "code_version": code_version(),
            "code_compat": compatibility_version(__version__),
            "started_at": started.isoformat(),
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(time.perf_counter() - t0, 3),
            "summary": _redact(dict(summary), names),
            **_cost_field(time.perf_counter() - t0),
        }

    try:
        summary = dict(work(writer) or {})
    except InputError as e:
        writer.discard()
        stale = _stale_outputs(existing, [])
        if stale:  # a tombstone retracts what the previous version committed
            tomb = document(RETRACTED, {"status": RETRACTED, "reason_code": e.reason_code},
                            [], stale)  # fmt: skip
            tomb["error"] = {"type": type(e).__name__, "reason_code": e.reason_code}
            try:
                _commit(ctx, writer, key, tomb, existing)
                _retract(ctx, stale)
            except Exception:  # noqa: BLE001 - the input error is what the caller needs
                logger.warning("could not write the tombstone of an item of step %s", ctx.step)
        raise
    except BaseException:
        writer.discard()
        raise
    rejected = writer.rejection or (
        summary.get("reason_code") if summary.get("status") == "quarantined" else None
    )
    outputs = list(writer.outputs)
    stale = _stale_outputs(existing, outputs)
    try:
        doc = document(RETRACTED if rejected else COMMITTED, summary, outputs, stale)
    except BaseException:  # e.g. no secret for an output's opaque reference
        writer.discard()
        raise
    if rejected:
        doc["reason_code"] = str(rejected)
    _commit(ctx, writer, key, doc, existing)  # undoes the item's writes if it fails
    _retract(ctx, stale)
    return ItemResult(
        item=item,
        status="done",
        manifest_key=key,
        outputs=tuple(str(o.get("key", o.get("ref"))) for o in doc["outputs"]),
        summary=doc["summary"],
        seconds=float(doc["seconds"]),
    )


def retract_item(ctx: StepContext, item: str, error: InputError) -> bool:
    """Retract what an item's manifest committed, for an input that is now gone or invalid.

    For a stage that finds an item's input missing before it can call
    :func:`process_item` (a BAM retracted upstream): the item's previous outputs get
    delete markers (version-checked) and its manifest becomes a tombstone naming the error.

    Returns:
        True when a committed manifest was retracted; False when there was none.
    """
    key = manifest_key(ctx.run_id, ctx.step, item)
    existing = read_manifest(ctx.store, ctx.manifest_bucket, key)
    if existing is None or not is_committed(existing):
        return False
    stale = _stale_outputs(existing, [])
    writer = ItemWriter(ctx)
    now = datetime.now(UTC).isoformat()
    tomb: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "status": RETRACTED,
        "run_id": ctx.run_id,
        "step": ctx.step,
        "item": existing.get("item", item),
        "inputs": existing.get("inputs", []),
        "outputs": [],
        "retracted": [ctx.record(ObjectRef(**r)) for r in stale],
        "params_hash": existing.get("params_hash"),
        "code_version": code_version(),
        "code_compat": compatibility_version(__version__),
        "started_at": now,
        "finished_at": now,
        "seconds": 0.0,
        "summary": {"status": RETRACTED, "reason_code": error.reason_code},
        "error": {"type": type(error).__name__, "reason_code": error.reason_code},
    }
    _commit(ctx, writer, key, tomb, existing)
    _retract(ctx, stale)
    return True


def iter_manifests(
    store: ObjectStore,
    bucket: str,
    run_id: str,
    step: str | None = None,
    *,
    include_retracted: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield the manifests of a run (optionally one step); tombstones only if asked."""
    prefix = f"{MANIFEST_ROOT}/{run_id}/" + (f"{step}/" if step else "")
    for key in store.list_keys(bucket, prefix):
        document: dict[str, Any] = json.loads(store.get_bytes(bucket, key))
        if include_retracted or is_committed(document):
            yield document


@dataclass(frozen=True)
class StepRecord:
    """One item's manifest as the next stage reads it: what it was and what it wrote.

    ``status`` is the item's outcome as its step summarised it (``deidentified``,
    ``converted``, ``extracted``, ``accepted``, ``quarantined``...); ``summary`` the whole
    summary; ``committed`` False for a tombstone (a rejected or retracted item).
    """

    item: str
    status: str | None
    summary: Mapping[str, Any]
    inputs: tuple[Mapping[str, Any], ...]
    outputs: tuple[Mapping[str, Any], ...]
    committed: bool

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> StepRecord:
        """Return the record of a manifest document (missing fields read as empty)."""
        summary = document.get("summary") or {}
        if not isinstance(summary, Mapping):
            raise ValueError("the manifest's summary is not an object")
        status = summary.get("status")
        return cls(
            item=str(document.get("item", "")),
            status=None if status is None else str(status),
            summary=summary,
            inputs=tuple(document.get("inputs") or ()),
            outputs=tuple(document.get("outputs") or ()),
            committed=is_committed(document),
        )


def run_manifests(
    store: ObjectStore,
    bucket: str,
    run_id: str,
    step: str,
    *,
    include_retracted: bool = False,
    unreadable: list[str] | None = None,
) -> list[StepRecord]:
    """Return the records of one step of a run, in key order (tombstones only if asked).

    A manifest that is not a JSON object with an object summary raises ``ValueError``,
    unless ``unreadable`` is given: then its key is appended there and the others are read
    (a stage that must not stop for one broken record counts them).
    """
    records = []
    for key in store.list_keys(bucket, f"{MANIFEST_ROOT}/{run_id}/{step}/"):
        try:
            document = json.loads(store.get_bytes(bucket, key))
            if not isinstance(document, Mapping):
                raise ValueError("the manifest is not a JSON object")
            record = StepRecord.from_document(document)
        except ValueError:
            if unreadable is None:
                raise
            unreadable.append(key)
            continue
        if include_retracted or record.committed:
            records.append(record)
    return records


def committed_outputs(
    store: ObjectStore, bucket: str, run_id: str, step: str | None = None
) -> list[dict[str, Any]]:
    """Return every output the committed manifests of a run (optionally one step) name."""
    outputs: list[dict[str, Any]] = []
    for document in iter_manifests(store, bucket, run_id, step):
        outputs.extend(document.get("outputs", []))
    return outputs
