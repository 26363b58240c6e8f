"""Manifests: the commit record of every item a stage processes.

A stage writes an item's outputs first and its manifest last, at
``_manifests/<run-id>/<step>/<item>.json``. Readers trust only outputs a manifest names.
A re-run skips an item whose manifest exists and records the same inputs (bucket, key,
ETag: the same content; the version is recorded too) and the same parameters hash; an
item that failed or was killed has no manifest and is done again. A failed item's
partial outputs are deleted before the error goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from oncopipe.runs import code_version, item_slug, params_hash, validate_run_id
from oncopipe.storage import TAG_RUN_ID, TAG_STEP, ObjectRef, ObjectStore

logger = logging.getLogger(__name__)

MANIFEST_ROOT = "_manifests"
SCHEMA_VERSION = 1


def manifest_key(run_id: str, step: str, item: str) -> str:
    """Return the key of an item's manifest."""
    return f"{MANIFEST_ROOT}/{run_id}/{step}/{item_slug(item)}.json"


@dataclass(frozen=True)
class StepContext:
    """What every item of one step in one run shares."""

    store: ObjectStore
    manifest_bucket: str
    run_id: str
    step: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_run_id(self.run_id)

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_RUN_ID: self.run_id, TAG_STEP: self.step}


class ItemWriter:
    """Writes one item's outputs, tagged with the run and step, and remembers them."""

    def __init__(self, ctx: StepContext) -> None:
        self._ctx = ctx
        self.outputs: list[ObjectRef] = []

    def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
    ) -> ObjectRef:
        ref = self._ctx.store.put_bytes(
            bucket, key, data, tags=self._ctx.tags, content_type=content_type
        )
        self.outputs.append(ref)
        return ref

    def put_json(self, bucket: str, key: str, document: Any) -> ObjectRef:
        data = json.dumps(document, indent=2, sort_keys=True, default=str).encode("utf-8")
        return self.put(bucket, key, data, content_type="application/json")

    def upload_file(self, path: str, bucket: str, key: str) -> ObjectRef:
        """Upload a local file as an output (BAMs and other large results)."""
        ref = self._ctx.store.upload_file(path, bucket, key, tags=self._ctx.tags)
        self.outputs.append(ref)
        return ref

    def copy(self, src: ObjectRef, bucket: str, key: str) -> ObjectRef:
        self._ctx.store.copy(
            src.bucket, src.key, bucket, key, tags=self._ctx.tags, version_id=src.version_id
        )
        ref = self._ctx.store.head(bucket, key)
        if ref is None:  # pragma: no cover - S3 read-after-write is strong
            raise RuntimeError(f"copy to s3://{bucket}/{key} is not visible")
        self.outputs.append(ref)
        return ref

    def discard(self) -> None:
        """Delete what this item wrote (best effort: a kill leaves it for the re-run)."""
        for ref in reversed(self.outputs):
            try:
                self._ctx.store.delete(ref.bucket, ref.key)
            except Exception:  # noqa: BLE001 - cleanup must not hide the original error
                logger.warning("could not delete partial output s3://%s/%s", ref.bucket, ref.key)
        self.outputs.clear()


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


def _input_identity(refs: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    # Content identity, not version: the same bytes uploaded again (a new version with
    # the same ETag) are not processed again; different bytes are.
    return sorted((r["bucket"], r["key"], r["etag"]) for r in refs)


def manifest_matches(
    document: Mapping[str, Any], inputs: Sequence[ObjectRef], params: Mapping[str, Any]
) -> bool:
    """Return True when a manifest records exactly these inputs and parameters."""
    recorded = document.get("inputs", [])
    return document.get("params_hash") == params_hash(params) and _input_identity(
        recorded
    ) == _input_identity([i.as_dict() for i in inputs])


def process_item(
    ctx: StepContext,
    item: str,
    inputs: Sequence[ObjectRef],
    work: Callable[[ItemWriter], Mapping[str, Any] | None],
) -> ItemResult:
    """Run ``work`` for one item unless a matching manifest says it is done.

    ``work`` writes its outputs through the :class:`ItemWriter` it receives and may return
    a small JSON-able summary (counts, a status) that goes into the manifest. It must not
    put PHI in that summary.

    Returns:
        The item's result; ``status`` is ``skipped`` when a matching manifest existed.

    Raises:
        Whatever ``work`` raises, after the item's partial outputs were deleted; no
        manifest is written then.
    """
    key = manifest_key(ctx.run_id, ctx.step, item)
    existing = read_manifest(ctx.store, ctx.manifest_bucket, key)
    if existing is not None and manifest_matches(existing, inputs, ctx.params):
        return ItemResult(
            item=item,
            status="skipped",
            manifest_key=key,
            outputs=tuple(o["key"] for o in existing.get("outputs", [])),
            summary=existing.get("summary", {}),
            seconds=0.0,
        )
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    writer = ItemWriter(ctx)
    try:
        summary = dict(work(writer) or {})
    except BaseException:
        writer.discard()
        raise
    seconds = time.perf_counter() - t0
    document = {
        "schema": SCHEMA_VERSION,
        "run_id": ctx.run_id,
        "step": ctx.step,
        "item": item,
        "inputs": [i.as_dict() for i in inputs],
        "outputs": [o.as_dict() for o in writer.outputs],
        "params": dict(ctx.params),
        "params_hash": params_hash(ctx.params),
        "code_version": code_version(),
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(seconds, 3),
        "summary": summary,
    }
    ctx.store.put_bytes(
        ctx.manifest_bucket,
        key,
        json.dumps(document, indent=2, sort_keys=True, default=str).encode("utf-8"),
        tags=ctx.tags,
        content_type="application/json",
    )
    return ItemResult(
        item=item,
        status="done",
        manifest_key=key,
        outputs=tuple(o.key for o in writer.outputs),
        summary=summary,
        seconds=seconds,
    )


def committed_outputs(
    store: ObjectStore, bucket: str, run_id: str, step: str | None = None
) -> list[dict[str, Any]]:
    """Return every output the manifests of a run (optionally one step) name."""
    prefix = f"{MANIFEST_ROOT}/{run_id}/" + (f"{step}/" if step else "")
    outputs: list[dict[str, Any]] = []
    for key in store.list_keys(bucket, prefix):
        document = json.loads(store.get_bytes(bucket, key))
        outputs.extend(document.get("outputs", []))
    return outputs
