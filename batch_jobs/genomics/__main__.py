"""Batch job entry: ``python -m batch_jobs.genomics align|call --run-id R --sample-table K ...``.

Environment (set by the job definition; validated at start): ``INGEST_BUCKET``,
``QUARANTINE_BUCKET``, ``CURATED_BUCKET``, ``ARTIFACTS_BUCKET``, optional
``REFERENCE_PREFIX`` (default ``reference/panel-v1/``) and ``THREADS`` (default: the vCPUs
the container sees). Prints one JSON line with the item's outcome (no PHI). Exit codes:
0 done, skipped or quarantined (a handled outcome); 2 bad arguments; 1 any other failure,
which Batch retries only for spot reclaims (the job definition's retry strategy).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from oncopipe import layout
from oncopipe.errors import OncopipeError
from oncopipe.genomics.stage import align_sample, call_sample, load_samples, plan
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_jobs.genomics", description=__doc__)
    parser.add_argument("step", choices=("align", "call"))
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--sample-table", required=True, help="curated key of the sample table")
    parser.add_argument("--sample", required=True, help="sample id (tumour sample for call)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = StageSettings.from_env()
    store = ObjectStore(make_client())
    reference = os.environ.get("REFERENCE_PREFIX", layout.ARTIFACTS_REFERENCE)
    threads = int(os.environ.get("THREADS") or os.cpu_count() or 1)
    samples = load_samples(store, settings.buckets, args.sample_table)
    try:
        if args.step == "align":
            lanes = [s for s in samples if s["sample"] == args.sample]
            if not lanes:
                parser.error(f"sample {args.sample} is not in {args.sample_table}")
            result = align_sample(store, settings.buckets, lanes, args.run_id,
                                  reference_prefix=reference, threads=threads)  # fmt: skip
        else:
            pair = next((p for p in plan(samples) if p[0]["sample"] == args.sample), None)
            if pair is None:
                parser.error(f"{args.sample} is not a tumour sample of {args.sample_table}")
            result = call_sample(store, settings.buckets, pair[0], pair[1], args.run_id,
                                 reference_prefix=reference)  # fmt: skip
    except Exception as e:  # the boundary: report, then fail the job (Batch decides retries)
        reason = str(e) if isinstance(e, OncopipeError) else "see the job log"
        print(json.dumps({"step": args.step, "sample": args.sample, "status": "failed",
                          "error": type(e).__name__, "reason": reason}))  # fmt: skip
        logging.getLogger("batch_jobs.genomics").exception("%s %s failed", args.step, args.sample)
        return 1
    outcome = {"step": args.step, "sample": args.sample, "item_status": result.status,
               "manifest": result.manifest_key, **dict(result.summary)}  # fmt: skip
    print(json.dumps(outcome, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
