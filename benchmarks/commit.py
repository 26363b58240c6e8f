#!/usr/bin/env python3
"""What committing an item costs: the manifest protocol against the plain one, in one run.

Against an S3 endpoint over HTTP (the embedded moto server of the local mode, versioned
buckets like the deployment's), for the same items with one Parquet output each:

1. commit: ``process_item`` (outputs, manifest, then the item's symlink file of its Glue
   table) against the plain protocol a user would write (PUT the output, PUT a manifest).
2. skip: a re-run of finished items; ours also checks each output is still the version it
   recorded and that the symlink file exists (HEADs), the plain one reads the manifest.
3. undo: a failed item's cleanup (version listing + restore or conditional delete).

Requests per item are counted from botocore's events. Timings are printed, never asserted;
on AWS each request is ~10-30 ms instead of moto's ~1 ms, so the request count is what
carries over. Usage: ``python benchmarks/commit.py [--items N] [--quick] [--json PATH]``
(quick: 50 items).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")

from _bench import Report

from oncopipe.manifest import StepContext, manifest_key, process_item
from oncopipe.storage import ObjectStore

BUCKET = "bench-curated"
PAYLOAD = os.urandom(64 * 1024)  # a small per-sample Parquet file


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-1",
                        aws_access_key_id="bench", aws_secret_access_key="bench")  # fmt: skip


def _plain(store: ObjectStore, run: str, item: str) -> None:
    """The protocol without the fixes: output then manifest; skip on its existence."""
    key = manifest_key(run, "call", item)
    if store.head(BUCKET, key) is not None:
        json.loads(store.get_bytes(BUCKET, key))
        return
    out = store.put_bytes(BUCKET, f"genomics/variants/pk-bench/{item}.parquet", PAYLOAD,
                          tags={"run-id": run})  # fmt: skip
    document = {"inputs": [], "outputs": [out.as_dict()], "params_hash": "x"}
    store.put_bytes(BUCKET, key, json.dumps(document).encode(), tags={"run-id": run})


def _ours(store: ObjectStore, run: str, item: str) -> None:
    ctx = StepContext(store=store, manifest_bucket=BUCKET, run_id=run, step="call",
                      params={"caller": "bench"})  # fmt: skip

    def work(writer: Any) -> dict[str, Any]:
        writer.put(BUCKET, f"genomics/variants/pk-bench/{item}.parquet", PAYLOAD)
        return {"status": "called"}

    process_item(ctx, item, [], work)


def _measure(
    store: ObjectStore, calls: Counter[str], fn: Any, run: str, n: int
) -> tuple[float, float]:
    calls.clear()
    start = time.perf_counter()
    for i in range(n):
        fn(store, run, f"S{i:04d}")
    seconds = time.perf_counter() - start
    return 1000 * seconds / n, sum(calls.values()) / n


def _undo(store: ObjectStore, calls: Counter[str], n: int) -> tuple[float, float]:
    ctx = StepContext(store=store, manifest_bucket=BUCKET, run_id="undo", step="call")
    calls.clear()
    start = time.perf_counter()
    for i in range(n):

        def work(writer: Any, i: int = i) -> None:
            writer.put(BUCKET, f"genomics/variants/pk-bench/U{i}.parquet", PAYLOAD)
            raise RuntimeError("bench failure")

        try:
            process_item(ctx, f"U{i}", [], work)
        except RuntimeError:
            pass
    return 1000 * (time.perf_counter() - start) / n, sum(calls.values()) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int)
    parser.add_argument("--quick", action="store_true", help="50 items")
    parser.add_argument("--json", type=Path, help="write the results rows here")
    args = parser.parse_args(argv)
    args.items = args.items or (50 if args.quick else 200)
    import logging

    from moto.server import ThreadedMotoServer

    from oncopipe.local.server import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's access log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = _client(f"http://127.0.0.1:{port}")
        location = {"LocationConstraint": "eu-west-1"}
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration=location)
        client.put_bucket_versioning(Bucket=BUCKET,
                                     VersioningConfiguration={"Status": "Enabled"})  # fmt: skip
        calls: Counter[str] = Counter()
        client.meta.events.register("before-call.s3", lambda model, **_: calls.update([model.name]))
        store = ObjectStore(client)
        n = args.items
        _measure(store, calls, _ours, "warm", 5)  # imports, connections
        _measure(store, calls, _plain, "warm-plain", 5)
        rows = []
        for name, fn in (("plain", _plain), ("ours", _ours)):
            commit = _measure(store, calls, fn, f"run-{name}", n)
            skip = _measure(store, calls, fn, f"run-{name}", n)
            rows.append((name, commit, skip))
        undo = _undo(store, calls, max(10, n // 4))
    finally:
        server.stop()
    print(f"{n} items, one 64 KiB output each, moto server over HTTP (versioned bucket)")
    print(f"{'protocol':<8} {'commit ms':>10} {'req':>5} {'skip ms':>9} {'req':>5}")
    for name, (c_ms, c_req), (s_ms, s_req) in rows:
        print(f"{name:<8} {c_ms:>10.2f} {c_req:>5.1f} {s_ms:>9.2f} {s_req:>5.1f}")
    (_, (pc, pcr), (ps, psr)), (_, (oc, ocr), (os_, osr)) = rows
    print(f"ratio ours/plain: commit {oc / pc:.2f}x time, {ocr / pcr:.2f}x requests; "
          f"skip {os_ / ps:.2f}x time, {osr / psr:.2f}x requests")  # fmt: skip
    print(f"undo of a failed item: {undo[0]:.2f} ms, {undo[1]:.1f} requests (failure path only)")
    report = Report("commit", quick=args.quick)
    report.add(
        "commit requests per item vs plain PUT output + manifest",
        ocr,
        pcr,
        unit="requests",
        note=f"{n} items, moto server; {oc:.1f} vs {pc:.1f} ms",
    )
    report.add("skip (re-run) requests per item vs plain manifest read", osr, psr,
               unit="requests", note=f"{os_:.1f} vs {ps:.1f} ms")  # fmt: skip
    report.write(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
