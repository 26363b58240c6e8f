"""SageMaker Processing entry: ``python -m processing.radiomics files|stage``.

``files`` (the SageMaker pipeline's step): volumes and masks that ProcessingInputs put
under ``/opt/ml/processing/input/{volumes,masks}/<patient_key>/<series>.parquet`` ->
``/opt/ml/processing/output/radiomics/<patient_key>/<series>.parquet`` for a
ProcessingOutput to upload. A series that fails is listed on stdout and makes the job
fail after the others are written.

``stage --run-id R`` (the daily imaging state machine, after the volumes job): every
series of an ingest run that has masks, read from and written to the curated bucket with
manifests (:func:`oncopipe.radiomics.stage.build_series_features`). Environment: the zone
buckets (``INGEST_BUCKET`` ... ``ARTIFACTS_BUCKET``).

Both use every CPU of the instance (one process per series) unless ``--workers`` says
otherwise, and print one JSON line per series.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

PROCESSING = Path("/opt/ml/processing")


def _files(args: argparse.Namespace) -> int:
    from oncopipe.radiomics.core import (
        Job,
        RadiomicsError,
        extract_many,
        load_params,
        write_features as write,
    )

    params = load_params(args.params)
    volumes = sorted((args.input / "volumes").glob("*/*.parquet"))
    jobs = [Job(volume=v, masks=args.input / "masks" / v.parent.name / v.name,
                patient_key=v.parent.name, run_id=args.run_id or "") for v in volumes]  # fmt: skip
    failed = 0
    for job, result in extract_many(jobs, params, workers=args.workers):
        line = {"series": job.volume.stem, "patient_key": job.patient_key}
        if isinstance(result, RadiomicsError):
            failed += 1
            print(json.dumps({**line, "status": "failed", "reason": str(result)}))
            continue
        out = args.output / "radiomics" / job.patient_key / job.volume.name
        rows = write(result.rows, out)
        print(json.dumps({**line, "status": "extracted", "features": rows, "rois": result.rois}))
    return 1 if failed else 0


def _stage(args: argparse.Namespace) -> int:
    from oncopipe.radiomics.stage import build_series_features
    from oncopipe.runs import previous_daily_run_id, validate_run_id
    from oncopipe.settings import StageSettings
    from oncopipe.storage import ObjectStore, make_client

    run_id = validate_run_id(args.run_id or previous_daily_run_id())
    settings = StageSettings.from_env()
    try:
        results = build_series_features(ObjectStore(make_client()), settings.buckets, run_id,
                                        params_path=args.params, workers=args.workers)  # fmt: skip
    except Exception:  # the boundary: log, fail the job
        logging.getLogger("processing.radiomics").exception("radiomics of %s failed", run_id)
        return 1
    for result in results:
        print(json.dumps({"run_id": run_id, "series": result.item, "item_status": result.status,
                          **dict(result.summary)}, default=str))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processing.radiomics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=("files", "stage"))
    parser.add_argument("--run-id", default=None, help="stage: default yesterday's ingest run")
    parser.add_argument("--params", default=None, help="PyRadiomics parameter file (default v1)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--input", type=Path, default=PROCESSING / "input")
    parser.add_argument("--output", type=Path, default=PROCESSING / "output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return _files(args) if args.mode == "files" else _stage(args)


if __name__ == "__main__":
    sys.exit(main())
