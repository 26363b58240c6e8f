"""SageMaker Processing entry: ``python -m processing.notes stage [--run-id R]``.

The clinical notes of an ingest run (the daily features state machine): every note the
router received is scrubbed of PHI and its concepts extracted (step ``notes``; a bad note
is quarantined with the reason), then the notes are tokenised for the model (step
``note-tokens``). Without ``--run-id`` it takes the previous UTC day's ingest run.
Environment: the zone buckets (``INGEST_BUCKET`` ... ``ARTIFACTS_BUCKET``), the
pseudonym secret (``PSEUDONYM_SECRET_ARN``) and the size cap of a note (``NOTES_MAX_BYTES``,
default 1000000; a bigger note is quarantined as ``note-too-large``). Prints one JSON line per
note (keys and counts only, never text); exit 1 on failure, 2 on a bad setting.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m processing.notes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=("stage",))
    parser.add_argument("--run-id", default=None, help="default: yesterday's ingest run")
    args = parser.parse_args(argv)
    # PyFastNER (inside PyRuSH) logs rule syntax on the root logger at INFO by the thousand
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")  # fmt: skip
    logging.getLogger("oncopipe").setLevel(logging.INFO)
    from oncopipe.errors import ConfigError
    from oncopipe.notes.stage import max_bytes_from_env, process_run_notes, tokenize_run_notes
    from oncopipe.pseudonym import load_secret
    from oncopipe.runs import previous_daily_run_id, validate_run_id
    from oncopipe.settings import StageSettings
    from oncopipe.storage import ObjectStore, make_client

    run_id = validate_run_id(args.run_id or previous_daily_run_id())
    settings = StageSettings.from_env()
    try:
        max_bytes = max_bytes_from_env(os.environ)  # a bad cap fails at start, not per note
    except ConfigError as e:
        print(f"python -m processing.notes: {e}", file=sys.stderr)
        return 2
    store = ObjectStore(make_client())
    try:
        notes = process_run_notes(store, settings.buckets, run_id, load_secret(),
                                  max_bytes=max_bytes)  # fmt: skip
        tokens = tokenize_run_notes(store, settings.buckets, run_id)
    except Exception:  # the boundary: log, fail the job
        logging.getLogger("processing.notes").exception("notes of %s failed", run_id)
        return 1
    tokenized = {r.item: r.summary.get("tokens") for r in tokens}
    for result in notes:
        summary = dict(result.summary)
        line: dict[str, object] = {"run_id": run_id, "item_status": result.status,
                **{k: summary.get(k) for k in ("status", "patient_key", "note_id", "concepts",
                                               "decode_replaced", "encoding", "reason_code")
                   if k in summary}}  # fmt: skip
        if summary.get("note_id") in tokenized:
            line["tokens"] = tokenized[summary["note_id"]]
        print(json.dumps(line, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
