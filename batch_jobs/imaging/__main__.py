"""Batch job entry: ``python -m batch_jobs.imaging volumes [--run-id R]``.

Converts every DICOM series de-identified in a run into a Parquet volume, with the masks
of the patient's RTSTRUCT/SEG objects beside it (:func:`build_series_volumes`). Without
``--run-id`` it takes the previous UTC day's ingest run (the daily schedule). Environment:
the zone buckets (``INGEST_BUCKET`` ... ``ARTIFACTS_BUCKET``). Prints one JSON line per
series. One bad series never stops the others: a series that cannot be converted is
reported (``inconsistent`` or ``quarantined`` with the reason: a data problem, exit 0);
a series that failed unexpectedly is reported ``failed`` after all the others were
done, and the job exits 1 so that the failure is seen (the re-run redoes only it).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from oncopipe.imaging.stage import build_series_volumes
from oncopipe.runs import previous_daily_run_id, validate_run_id
from oncopipe.settings import StageSettings
from oncopipe.storage import ObjectStore, make_client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m batch_jobs.imaging", description=__doc__)
    parser.add_argument("step", choices=("volumes",))
    parser.add_argument("--run-id", default=None, help="default: yesterday's ingest run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_id = validate_run_id(args.run_id or previous_daily_run_id())
    settings = StageSettings.from_env()
    try:
        results = build_series_volumes(ObjectStore(make_client()), settings.buckets, run_id)
    except Exception:  # the boundary: log, fail the job (Batch retries spot reclaims only)
        logging.getLogger("batch_jobs.imaging").exception("volumes of %s failed", run_id)
        return 1
    for result in results:
        print(json.dumps({"run_id": run_id, "series": result.item, "item_status": result.status,
                          **dict(result.summary)}, default=str))  # fmt: skip
    return 1 if any(result.status == "failed" for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
