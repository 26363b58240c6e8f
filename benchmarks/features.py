#!/usr/bin/env python3
"""Feature-stage benchmarks (radiomics, clinical notes), side by side, printed as ratios.

Nothing is asserted.

1. IBSI-1 compliance table: our core on the IBSI digital phantom against every reference
   value that has a PyRadiomics feature (feature, reference, ours, tolerance, pass).
2. Seconds and features per scan: ``oncopipe radiomics`` (Parquet volume + masks) against
   the ``pyradiomics`` command-line tool (NIfTI image + mask) on the same CT-like volume
   and the same parameter file (``params/radiomics-v1.yaml``), both started as commands
   the way a user runs them, start-up included. Goal (issue 14): <= 1.0x the pyradiomics
   CLI at every size. Both run from bytecode, as installed packages do: pip compiled
   PyRadiomics' modules, while oncopipe runs from the checkout, where
   ``PYTHONDONTWRITEBYTECODE`` (set on these machines) would make it compile its own
   modules on every start (~70 ms); each command gets one untimed run that fills a shared
   ``PYTHONPYCACHEPREFIX`` first. Profile: ``benchmarks/profiles.md``.
3. Scaling over series: the same series extracted with 1 and 2 processes.

Usage: ``python benchmarks/features.py [--quick] [--json PATH]`` (``--json``: the rows).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")

import numpy as np
from _bench import Report

from oncopipe.imaging.masks import write_masks
from oncopipe.imaging.volume import Geometry, to_sitk, write_volume
from oncopipe.radiomics.core import DEFAULT_PARAMS, Job, extract_many, load_params
from oncopipe.radiomics.ibsi import phantom_dir, run_check

REPO = Path(__file__).resolve().parent.parent
PHANTOM = phantom_dir()
REPORT = Report("features", quick="--quick" in sys.argv)


def ibsi_table() -> None:
    rows = run_check(PHANTOM)
    print(f"{'IBSI':<5} {'feature':<48} {'reference':>12} {'ours':>12} {'tol':>8}  pass")
    for r in rows:
        print(f"{r.ibsi_code:<5} {r.feature:<48} {r.reference:>12.4g} {r.ours:>12.4g} "
              f"{r.tolerance:>8.3g}  {'yes' if r.passed else 'NO'}")  # fmt: skip
    passed = sum(r.passed for r in rows)
    print(f"IBSI-1 digital phantom: {passed}/{len(rows)} reference values within tolerance\n")
    REPORT.add("IBSI-1 phantom reference values within tolerance", passed, len(rows),
               goal="all", unit="values", passed=passed == len(rows))  # fmt: skip


def ct_like(out: Path, seed: int, size: int, slices: int) -> tuple[Path, Path]:
    """A CT-like volume (0.8 x 0.8 x 2.5 mm, int16 + intercept) with a ~3 cm lesion."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:slices, 0:size, 0:size].astype(np.float32)
    body = ((y - size / 2) ** 2 + (x - size / 2) ** 2) < (0.45 * size) ** 2
    stored = np.where(body, 1024 + 40 + rng.normal(0, 12, body.shape), 24).astype(np.int16)
    cz, cy, cx = slices / 2, size / 2 + 10, size / 2 - 15
    lesion = ((z - cz) * 2.5) ** 2 + ((y - cy) * 0.8) ** 2 + ((x - cx) * 0.8) ** 2 < 15.0**2
    stored[lesion] = (1024 + 70 + rng.normal(0, 35, int(lesion.sum()))).astype(np.int16)
    geometry = Geometry((size, size, slices), (0.8, 0.8, 2.5), (-200.0, -200.0, 0.0),
                        (1, 0, 0, 0, 1, 0, 0, 0, 1), 1.0, -1024.0, "<i2", f"1.2.3.{seed}",
                        "CT")  # fmt: skip
    volume = out / f"ct{seed}.parquet"
    write_volume(stored, geometry, volume)
    write_masks({"GTV": lesion.astype(np.uint8)}, geometry,
                out / f"ct{seed}.masks.parquet")  # fmt: skip
    import SimpleITK as sitk

    hu = stored.astype(np.float32) - 1024.0
    sitk.WriteImage(to_sitk(hu, geometry), str(out / f"ct{seed}.nii.gz"))
    sitk.WriteImage(to_sitk(lesion.astype(np.uint8), geometry), str(out / f"ct{seed}_mask.nii.gz"))
    return volume, out / f"ct{seed}.nii.gz"


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=REPO, env=env)
    return time.perf_counter() - started


def bytecode_env(cache: Path) -> dict[str, str]:
    """The environment with a shared bytecode cache (both tools start from .pyc files)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def per_scan(tmp: Path, size: int, slices: int, repeats: int) -> None:
    volume, nifti = ct_like(tmp, 1, size, slices)
    ours_out, theirs_out = tmp / "ours.parquet", tmp / "theirs.csv"
    ours_cmd = [sys.executable, "-m", "oncopipe", "radiomics", "--volume", str(volume),
                "--out", str(ours_out)]  # fmt: skip
    theirs_cmd = [str(Path(sys.executable).parent / "pyradiomics"), str(nifti),
                  str(nifti).replace(".nii.gz", "_mask.nii.gz"), "--param", str(DEFAULT_PARAMS),
                  "-o", str(theirs_out), "-f", "csv"]  # fmt: skip
    env = bytecode_env(tmp / "pycache")
    timed(ours_cmd, env)  # untimed: fills the bytecode cache and the page cache
    timed(theirs_cmd, env)
    ours, theirs = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        ours.append(timed(ours_cmd, env))
        theirs.append(timed(theirs_cmd, env))
    import pyarrow.parquet as pq

    table = pq.read_table(ours_out)
    ours_features = dict(zip(table.column("feature").to_pylist(),
                             table.column("value").to_pylist(), strict=True))  # fmt: skip
    with open(theirs_out, newline="") as f:
        row = next(csv.DictReader(f))
    theirs_features = {k: float(v) for k, v in row.items() if not k.startswith("diagnostics_")
                       and k not in ("Image", "Mask")}  # fmt: skip
    differ = [k for k, v in theirs_features.items()
              if k not in ours_features
              or not np.isclose(ours_features[k], v, rtol=5e-4, atol=1e-3)]  # fmt: skip
    same = len(theirs_features) - len(differ)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"per scan ({size}x{size}x{slices} CT, one ~3 cm ROI, median of {repeats}):")
    print(f"  oncopipe radiomics : {o:6.2f} s, {len(ours_features)} features")
    print(f"  pyradiomics CLI    : {t:6.2f} s, {len(theirs_features)} features")
    print(
        f"  ratio (ours/CLI)   : {o / t:.2f}x   (goal <= 1.0x, start-up included); "
        f"{same}/{len(theirs_features)} features agree within 5e-4"
    )
    REPORT.add(
        "radiomics seconds per scan vs pyradiomics CLI",
        o,
        t,
        goal="<= 1.0x",
        unit="s",
        passed=o / t <= 1.0,
        note=f"{size}x{size}x{slices} CT; {same}/{len(theirs_features)} features agree",
    )
    for k in differ[:5]:
        print(f"    differs: {k}: ours {ours_features.get(k)!r}, CLI {theirs_features[k]!r}")
    print()


def scaling(tmp: Path, size: int, slices: int, series: int) -> None:
    jobs = [Job(ct_like(tmp, 10 + i, size, slices)[0], None) for i in range(series)]
    params = load_params()
    seconds = {}
    for workers in (1, 2):
        started = time.perf_counter()
        for _ in extract_many(jobs, params, workers=workers):
            pass
        seconds[workers] = time.perf_counter() - started
    print(f"scaling over {series} series ({size}x{size}x{slices}):")
    for workers, s in seconds.items():
        print(f"  {workers} process(es): {s:6.2f} s, {series / s:.2f} series/s")
    print(f"  speed-up 1 -> 2 processes: {seconds[1] / seconds[2]:.2f}x (2 cores)\n")
    REPORT.add("radiomics series/s, 2 processes vs 1", series / seconds[2], series / seconds[1],
               unit="series/s", note=f"{series} series; no goal in the issue")  # fmt: skip


def notes_throughput(count: int) -> None:
    """Notes per second: the whole notes core against its NLP part alone, same notes.

    Then the time of one long note (33 KB and 165 KB: linear means ~5x, the quadratic NLP and
    scrubber before the chunking took 2.4 s and 47 s) and the scrubber's recall on the held-out
    names of ``tests/data/notes/heldout_names.txt`` planted in every template position.

    Each long note is timed three times, interleaved, after a full ``gc.collect()``, and the
    fastest run counts: on the shared benchmark machine runs of the same note differed by up to
    two thirds, and a full collection of the ~330k objects the loaded libraries hold (0.3-0.8 s)
    fell into whichever note was running when it came due. The notes are 4.97-4.98x apart in
    length (4.99x in tokens), so linear code measures about 5.0x (4.86-5.79x over ten runs,
    5.0-5.1x in most): a 5.0x limit failed seven of those ten, so the row allows 5 % for timing
    (5.25x). See ``benchmarks/profiles.md``.
    """
    import random
    from datetime import date

    from oncopipe.notes.core import parse_note, process_note
    from oncopipe.notes.evaluate import leaked_name_parts, planted_name_notes, read_name_list
    from oncopipe.notes.nlp import extract, get_nlp
    from oncopipe.notes.sample import generate_note
    from oncopipe.notes.scrub import safe_words, scrub

    rng = random.Random(3)
    notes = [generate_note(rng, mrn=f"MRN-{1000000 + i}", name="Ada Okafor",
                           note_date=date(2026, 3, 1 + i % 27))[0].encode()
             for i in range(count)]  # fmt: skip
    secret = bytes(range(32))
    get_nlp()  # built once per process, as in the job
    safe_words()  # the scrubber's safelist, read once per process
    started = time.perf_counter()
    for i, data in enumerate(notes):
        process_note(data, f"notes/n{i}.txt", secret=secret, fallback_patient_id=None)
    whole = time.perf_counter() - started
    bodies = [parse_note(d, "n").body for d in notes]
    started = time.perf_counter()
    for body in bodies:
        extract(body)
    nlp = time.perf_counter() - started
    print(f"notes stage ({count} generated notes, one process):")
    print(f"  parse + scrub + concepts: {count / whole:6.1f} notes/s")
    print(f"  concepts only (medspaCy): {count / nlp:6.1f} notes/s")
    print(f"  ratio whole/NLP time    : {whole / nlp:.2f}x (the scrubber's share)")
    REPORT.add(
        "notes/s (parse + scrub + concepts, one process)",
        count / whole,
        50.0,
        goal=">= 50 notes/s",
        unit="notes/s",
        passed=count / whole >= 50,
        note=f"{count} generated ~1 KB notes; medspaCy alone {count / nlp:.0f}/s",
    )
    long_notes = {}
    for kb in (33, 165):
        text, i = "Patient-ID: MRN-1000001\n\n", 0
        while len(text) < kb * 1000:
            text += bodies[i % len(bodies)]
            i += 1
        long_notes[kb] = text.encode()
    runs: dict[int, list[float]] = {33: [], 165: []}
    for _ in range(3):  # interleaved, so both see the same machine load
        for kb, data in long_notes.items():
            gc.collect()  # no collection of earlier notes' survivors lands in this one
            started = time.perf_counter()
            process_note(data, "notes/long.txt", secret=secret, fallback_patient_id=None)
            runs[kb].append(time.perf_counter() - started)
    seconds = {kb: min(times) for kb, times in runs.items()}
    for kb in (33, 165):
        print(f"  one {kb:3d} KB note       : {seconds[kb]:6.2f} s (fastest of 3)")
    ratio = seconds[165] / seconds[33]
    length = len(long_notes[165]) / len(long_notes[33])
    print(f"  165 KB / 33 KB time     : {ratio:.2f}x (linear: {length:.2f}x, the length ratio)")
    REPORT.add("long note time, 165 KB vs 33 KB", seconds[165], seconds[33],
               goal="<= 5.25x (linear: 5x, +5% timing)", unit="s", passed=ratio <= 5.25,
               note=f"fastest of 3 runs each; the notes are {length:.2f}x apart")  # fmt: skip
    names = read_name_list(REPO / "tests" / "data" / "notes" / "heldout_names.txt")
    planted = planted_name_notes(names)
    leaked = {n for t, n in planted if leaked_name_parts(n, scrub(t, date_shift_days=None).text)}
    print(f"  held-out names left     : {len(leaked)} of {len(names)} names "
          f"({len(planted)} planted notes)\n")  # fmt: skip
    REPORT.add("held-out names left after scrubbing", len(leaked), len(names), goal="0",
               unit="names", passed=not leaked, ratio=len(leaked) / len(names))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller volumes, fewer repeats")
    parser.add_argument("--json", type=Path, help="write the results rows here")
    args = parser.parse_args()
    size, slices = (128, 24) if args.quick else (256, 48)
    ibsi_table()
    with tempfile.TemporaryDirectory() as tmp:
        per_scan(Path(tmp), size, slices, repeats=3)
        scaling(Path(tmp), size, slices, series=4 if args.quick else 8)
    notes_throughput(50 if args.quick else 200)
    REPORT.write(args.json)


if __name__ == "__main__":
    main()
