"""The benchmarks' machine-readable output has what ``benchmarks/results.md`` needs.

Fast: the shared helpers, the results page, and the WGS scale model on given figures (the
measured phases need bwa and a minute; ``make bench`` runs them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _bench  # noqa: E402
import run_all  # noqa: E402


def test_report_json_has_the_table_fields(tmp_path: Path) -> None:
    report = _bench.Report("demo", quick=True)
    report.add("rows/s vs tool", 200.0, 100.0, goal=">= 1.0x", unit="rows/s", passed=True)
    report.memory.append(_bench.Memory("stage", "input", 1.0, 50.0, 0.1))
    out = tmp_path / "r.json"
    report.write(out)
    document = json.loads(out.read_text())
    row = document["rows"][0]
    assert set(_bench.ROW_FIELDS) <= set(row)
    assert row["ratio"] == pytest.approx(2.0)
    assert document["machine"]["cores"] >= 1 and document["machine"]["date"]
    assert document["memory"][0]["peak_rss_mb"] == 50.0


def test_child_peak_rss_counts_what_the_child_allocates() -> None:
    small = _bench.run_child("x = 1")
    large = _bench.run_child("x = bytearray(200 * 2**20)\nx[::4096] = b'1' * len(x[::4096])")
    assert large.peak_rss_mb - small.peak_rss_mb > 150


def test_child_failure_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="exit 3"):
        _bench.run_child("raise SystemExit(3)")


def test_linear_fit() -> None:
    a, b = _bench.linear_fit([(1.0, 12.0), (3.0, 16.0)])
    assert (a, b) == pytest.approx((10.0, 2.0))


def test_results_page_has_every_row_goal_and_verdict() -> None:
    documents = [
        {"benchmark": "genomics", "seconds": 3.0, "memory": [], "rows": [
            {"benchmark": "genomics", "metric": "VCF rows/s", "ours": 2.0, "baseline": 1.0,
             "ratio": 2.0, "goal": ">= 1.0x", "passed": True, "unit": "rows/s", "note": ""},
            {"benchmark": "genomics", "metric": "align", "ours": 3.0, "baseline": 1.0,
             "ratio": 3.0, "goal": "<= 1.10x", "passed": False, "unit": "s", "note": ""}]},
        run_all._failed("imaging", "exit 1: boom"),
    ]  # fmt: skip
    page = run_all.render(documents, _bench.machine(), full=False)
    assert "| genomics | VCF rows/s | 2 | 1 | 2 | >= 1.0x | pass |" in page
    assert "**miss**" in page
    assert "exit 1: boom" in page
    assert "make test wall time" in page and "measured by CI" in page
    assert f"{_bench.machine()['cores']} cores" in page


def test_every_benchmark_script_is_run_by_make_bench() -> None:
    listed = {name for name, _ in run_all.SCRIPTS}
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")}
    assert scripts - {"run_all"} == listed


def test_wgs_model_rows_against_the_cited_goal() -> None:
    import wgs_scale

    measured = wgs_scale.Measured(
        split_seconds_per_pair=4e-5,
        shard_pairs=20_000, shard_seconds=8.0, shard_cpu_per_pair=2e-4, bwa_cpu_per_pair=1.8e-4,
        shard_rss_mb=100.0, bwa_rss_mb=90.0, index_mb=20.0, gather_seconds_per_pair=6e-5,
        gather_rss_mb=100.0, call_seconds_per_base_30x=2e-5, call_rss_mb=100.0,
    )  # fmt: skip
    report = _bench.Report("wgs_scale", quick=True)
    wgs_scale.model(measured, report)
    walls = [r for r in report.rows if r.metric.startswith("150 GB WGS wall time")]
    assert [int(r.metric.split(", ")[1].split()[0]) for r in walls] == [16, 64, 256]
    assert all(r.baseline == 30.0 and r.unit == "min" and r.passed is not None for r in walls)
    # more concurrency never makes the modelled run slower
    assert walls[0].ours >= walls[1].ours >= walls[2].ours  # type: ignore[operator]
    assert "spot $" in walls[0].note and "split " in walls[0].note
    # the split is one process: no concurrency shortens it, so every wall time holds it
    split_minutes = 150e9 / wgs_scale.BYTES_PER_GZ_PAIR * 4e-5 / 60
    assert all(r.ours > split_minutes for r in walls)  # type: ignore[operator]
