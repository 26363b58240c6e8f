#!/usr/bin/env python3
"""Peak memory of the stages against their input, so users can size instances.

Each stage runs in a child process (``_bench.run_child``: ``os.wait4``'s ``ru_maxrss``,
the largest single process including the tools it started) at two input sizes, and a line
``peak ~= a + b x input`` is fitted through them:

1. DICOM series -> Parquet (:func:`oncopipe.imaging.volume.series_to_parquet`) on synthetic
   CT series (:func:`oncopipe.imaging.sample.write_ct_series`) of 100 and 400 slices of
   256 x 256 (quick: 60 and 180): 512 x 512 slices are 4x the bytes and too slow to write
   here, so the fit is per MB of DICOM and scaled to a 1,000-slice 512 x 512 series
   (~500 MB) in the output. (128 x 128 slices overstated it: a data set's own Python
   objects, ~0.1 MB, are as large as such a slice.)
2. De-identification of one 512 x 512 CT slice and of a 128 x 128 one (per-file stage).
3. The notes core (:func:`oncopipe.notes.core.process_note`) on a 250 KB and a 1 MB note
   (the stage's default size limit), built from generated notes.

The alignment shard's memory is measured by ``benchmarks/wgs_scale.py`` (it needs the
reference). Usage: ``python benchmarks/memory.py [--quick] [--json PATH]`` (quick: series of
60 and 180 slices, notes of 50 and 200 KB; the fits extrapolate to the figures above).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")

from _bench import Memory, Report, linear_fit, run_child

SERIES_512_MB = 1000 * (512 * 512 * 2 + 2000) / 2**20  # 1,000 slices of int16 + headers
SERIES_SIZE = 256  # the measured series' slices (pixels square)


def _series(tmp: Path, slices: int, size: int, seed: int) -> tuple[Path, float]:
    from oncopipe.imaging.sample import write_ct_series

    folder = tmp / f"series-{slices}-{size}"
    paths = write_ct_series(folder, random.Random(seed), mrn=f"MRN-{seed}", name="Ann Lee",
                            slices=slices, size=size)  # fmt: skip
    return folder, sum(p.stat().st_size for p in paths) / 2**20


def series_memory(report: Report, tmp: Path, sizes: tuple[int, ...]) -> tuple[float, float]:
    """Measure series -> Parquet at each slice count; return the fit (a MB, b MB per MB)."""
    points = []
    for slices in sizes:
        folder, megabytes = _series(tmp, slices, SERIES_SIZE, slices)
        run = run_child(
            "from pathlib import Path\nfrom oncopipe.imaging.volume import series_to_parquet\n"
            f"paths = sorted(Path({str(folder)!r}).glob('*.dcm'))\n"
            f"series_to_parquet(paths, Path({str(folder)!r} + '.parquet'))\n"
        )
        report.memory.append(Memory("series-to-parquet",
                                    f"{slices} slices of {SERIES_SIZE}x{SERIES_SIZE}",
                                    megabytes, run.peak_rss_mb, run.seconds))  # fmt: skip
        points.append((megabytes, run.peak_rss_mb))
    return linear_fit(points)


def deid_memory(report: Report, tmp: Path) -> None:
    """Measure the de-identification of one slice at 128 and 512 pixels square."""
    for size in (128, 512):
        folder, megabytes = _series(tmp, 1, size, 7 + size)
        path = next(folder.glob("*.dcm"))
        run = run_child(
            "import io\nimport pydicom\nfrom oncopipe.imaging.deid import Deidentifier\n"
            f"ds = pydicom.dcmread({str(path)!r})\n"
            "Deidentifier(bytes(range(32))).deidentify(ds, source='bench')\n"
            "ds.save_as(io.BytesIO())\n"
        )
        report.memory.append(Memory("deid (one file)", f"one {size}x{size} CT slice",
                                    megabytes, run.peak_rss_mb, run.seconds))  # fmt: skip


def _note(tmp: Path, kilobytes: int) -> Path:
    from datetime import date

    from oncopipe.notes.sample import generate_note

    rng = random.Random(3)
    bodies = [generate_note(rng, mrn=f"MRN-{1000000 + i}", name="Ada Okafor",
                            note_date=date(2026, 3, 1 + i % 27))[0]
              for i in range(40)]  # fmt: skip
    text, i = "Patient-ID: MRN-1000001\n\n", 0
    while len(text) < kilobytes * 1000 - 2000:
        text += bodies[i % len(bodies)].split("\n\n", 1)[-1]
        i += 1
    path = tmp / f"note-{kilobytes}.txt"
    path.write_bytes(text.encode()[: kilobytes * 1000 - 1000])
    return path


def note_memory(report: Report, tmp: Path, sizes: tuple[int, ...]) -> tuple[float, float]:
    """Measure the notes core at each note size (KB); return the fit (a MB, b MB per MB)."""
    points = []
    for kilobytes in sizes:
        path = _note(tmp, kilobytes)
        megabytes = path.stat().st_size / 2**20
        run = run_child(
            "from pathlib import Path\nfrom oncopipe.notes.core import process_note\n"
            f"process_note(Path({str(path)!r}).read_bytes(), 'notes/bench.txt', "
            "secret=bytes(range(32)), fallback_patient_id=None)\n"
        )
        report.memory.append(Memory("notes", f"one {kilobytes} KB note", megabytes,
                                    run.peak_rss_mb, run.seconds))  # fmt: skip
        points.append((megabytes, run.peak_rss_mb))
    return linear_fit(points)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller larger inputs")
    parser.add_argument("--json", type=Path, help="write the memory rows here")
    args = parser.parse_args()
    report = Report("memory", quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="oncopipe-mem-") as tmp:
        work = Path(tmp)
        sa, sb = series_memory(report, work, (60, 180) if args.quick else (100, 400))
        deid_memory(report, work)
        na, nb = note_memory(report, work, (50, 200) if args.quick else (250, 1000))
    print(f"{'stage':<20} {'input':<34} {'input MB':>9} {'peak RSS MB':>12} {'s':>6}")
    for m in report.memory:
        print(f"{m.stage:<20} {m.input:<34} {m.input_mb:>9.1f} {m.peak_rss_mb:>12.0f} "
              f"{m.seconds:>6.1f}")  # fmt: skip
    series_512 = sa + sb * SERIES_512_MB
    print(
        f"\nseries -> Parquet: peak ~= {sa:.0f} MB + {sb:.2f} x DICOM MB "
        f"(1,000 x 512x512 series, ~{SERIES_512_MB:.0f} MB: ~{series_512:.0f} MB, scaled)"
    )
    print(f"notes: peak ~= {na:.0f} MB + {nb:.1f} x note MB (1 MB note: ~{na + nb:.0f} MB)")
    report.extra = {"series_fit_mb": [sa, sb], "series_512_estimate_mb": series_512,
                    "notes_fit_mb": [na, nb]}  # fmt: skip
    report.add(
        "series -> Parquet peak RSS, 1,000 x 512x512 (scaled fit)",
        series_512,
        None,
        unit="MB",
        note=f"{sa:.0f} MB + {sb:.2f} x DICOM MB, fit on {SERIES_SIZE}x{SERIES_SIZE} series",
    )
    report.add("notes peak RSS, 1 MB note (fit)", na + nb, None, unit="MB",
               note=f"{na:.0f} MB + {nb:.1f} x note MB")  # fmt: skip
    report.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
