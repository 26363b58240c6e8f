"""Batch job entry: ``python -m batch_jobs.genomics align|call --run-id R --sample-table K ...``.

Environment (set by the job definition; validated at start): ``INGEST_BUCKET``,
``QUARANTINE_BUCKET``, ``CURATED_BUCKET``, ``ARTIFACTS_BUCKET``, for ``align`` the
pseudonymisation secret (``PSEUDONYM_SECRET_ARN``), optional
``REFERENCE_PREFIX`` (default ``reference/panel-v1/``) and ``THREADS`` (default: the vCPUs
the container sees). Exit codes: 0 done, skipped or quarantined (a handled outcome); 2 bad
arguments; 1 any other failure, which Batch retries only for spot reclaims (the job
definition's retry strategy).

Prints one JSON line with the item's outcome, and logs, without PHI (stdout and stderr go
to CloudWatch Logs; :mod:`oncopipe.boundary`): the step, the sample id, the status and
reason code, counts and curated keys; a failure by its error type, reason code, the opaque
reference of the object it names and the AWS error codes behind it. The readable reason of a
quarantined sample (which names its FASTQ files) is in the quarantine zone's reason
document, beside the quarantined copy.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from oncopipe import layout
from oncopipe.boundary import failure_fields, log_failure, pick
from oncopipe.genomics.stage import align_sample, call_sample, load_samples, plan
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client

logger = logging.getLogger("batch_jobs.genomics")

#: Summary fields an outcome line may carry (an allow-list: see :func:`oncopipe.boundary.pick`).
OUTCOME_FIELDS = ("kind", "status", "reason_code", "lanes", "reads", "bam", "qc", "variants",
                  "hotspots", "quarantined")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run one job; return its exit code (see the module docstring)."""
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
    secret: bytes | None = None
    try:
        samples = load_samples(store, settings.buckets, args.sample_table)
        if args.step == "align":
            lanes = [s for s in samples if s["sample"] == args.sample]
            if not lanes:
                parser.error(f"sample {args.sample} is not in {args.sample_table}")
            from oncopipe.pseudonym import load_secret

            # the curated manifest names the ingest FASTQ files by opaque reference
            secret = load_secret()
            result = align_sample(store, settings.buckets, lanes, args.run_id,
                                  key_secret=secret, reference_prefix=reference,
                                  threads=threads)  # fmt: skip
        else:
            pair = next((p for p in plan(samples) if p[0]["sample"] == args.sample), None)
            if pair is None:
                parser.error(f"{args.sample} is not a tumour sample of {args.sample_table}")
            result = call_sample(store, settings.buckets, pair[0], pair[1], args.run_id,
                                 reference_prefix=reference)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the boundary: report by type, fail the job
        # (Batch decides retries). Never str(e): an InputError names an ingest key.
        failure: dict[str, Any] = {"step": args.step, "run_id": args.run_id,
                                   "sample": args.sample,
                                   **failure_fields(e, secret=secret)}  # fmt: skip
        print(json.dumps(failure), flush=True)
        log_failure(logger, f"{args.step} of sample {args.sample} in run {args.run_id}", e)
        return 1
    outcome = {"step": args.step, "run_id": args.run_id, "sample": args.sample,
               "item_status": result.status, "manifest": result.manifest_key,
               **pick(result.summary, OUTCOME_FIELDS)}  # fmt: skip
    print(json.dumps(outcome, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
