#!/usr/bin/env python3
"""Run every benchmark in quick mode and write ``benchmarks/results.md`` (``make bench``).

Each script runs as its own process with ``--quick --json <tmp>``; its rows (see
``_bench.Row``) are collected into one table: metric, ours, the alternative, the ratio, the
goal, pass/miss, plus the peak-memory rows and the machine (cores, date). A script that
fails or runs past its time limit gets a row saying so, and the others still run; the exit
status is non-zero then. The benchmarks assert nothing: a "miss" is a finding, not an error.

Usage: ``python benchmarks/run_all.py [--out benchmarks/results.md] [--only NAME ...]
[--full]`` (``--full``: without ``--quick``, minutes to an hour).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")
from _bench import ROW_FIELDS, machine

HERE = Path(__file__).resolve().parent
#: (script, time limit in seconds in quick mode); every script of benchmarks/ is listed.
SCRIPTS: tuple[tuple[str, int], ...] = (
    ("genomics", 240),
    ("wgs_scale", 240),
    ("imaging", 240),
    ("features", 420),
    ("memory", 420),
    ("model", 600),
    ("commit", 180),
    ("drift_detection", 240),
    ("pipeline_local", 300),
    ("synth_time", 240),
)
CI_ROWS = [
    {"benchmark": "ci", "metric": "make test wall time", "ours": None, "baseline": None,
     "ratio": None, "goal": "measured by CI", "passed": None, "unit": "s",
     "note": "measured by CI on its runners, not here: this machine's cores are shared"},
]  # fmt: skip


def run_script(name: str, limit: int, out: Path, *, full: bool) -> tuple[dict[str, Any], str]:
    """Run one benchmark; return its JSON document (or a failure stand-in) and its status."""
    command = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
    if not full:
        command.append("--quick")
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return _failed(name, f"ran past its {limit} s limit"), "timeout"
    seconds = time.perf_counter() - started
    log = HERE / ".logs" / f"{name}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0 or not out.exists():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return _failed(name, f"exit {done.returncode}: {tail}"), "failed"
    document: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    document["seconds"] = round(seconds, 1)
    return document, "ok"


def _failed(name: str, why: str) -> dict[str, Any]:
    row = dict.fromkeys(ROW_FIELDS)
    row.update(benchmark=name, metric="(benchmark did not finish)", goal="", unit="", note=why)
    return {"benchmark": name, "rows": [row], "memory": [], "seconds": None}


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _verdict(passed: Any) -> str:
    return {True: "pass", False: "**miss**"}.get(passed, "–")


def render(documents: list[dict[str, Any]], facts: dict[str, Any], *, full: bool) -> str:
    """Return the results page (Markdown) of the collected documents."""
    rows = [r for d in documents for r in d["rows"]] + CI_ROWS
    lines = [
        "# Benchmark results",
        "",
        f"Written by `make bench` ({'full' if full else 'quick'} mode) on "
        f"{facts['date']}, {facts['cores']} cores, Python {facts['python']}, "
        f"{facts['platform']}. Ratio: ours / the alternative in the goal's direction "
        "(time ratios: lower is better; throughput ratios: higher is better). Quick-mode "
        "inputs are small, so fixed start-up costs weigh more than at production sizes; "
        "`python benchmarks/<name>.py` runs the full sizes. Regenerate: `make bench`.",
        "",
        "| benchmark | metric | ours | alternative | ratio | goal | result | unit | note |",
        "|---|---|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        note = str(r.get("note") or "").replace("|", "\\|")
        metric = str(r["metric"]).replace("|", "\\|")
        lines.append(
            f"| {r['benchmark']} | {metric} | {_number(r['ours'])} | "
            f"{_number(r['baseline'])} | {_number(r['ratio'])} | {r['goal'] or '–'} | "
            f"{_verdict(r['passed'])} | {r['unit'] or ''} | {note} |"
        )
    memory = [m for d in documents for m in d.get("memory", [])]
    if memory:
        lines += [
            "",
            "## Peak memory (RSS of the largest process of the stage, child process)",
            "",
            "| stage | input | input MB | peak RSS MB | seconds | note |",
            "|---|---|---:|---:|---:|---|",
        ]
        for m in memory:
            lines.append(
                f"| {m['stage']} | {m['input']} | {m['input_mb']:.1f} | "
                f"{m['peak_rss_mb']:.0f} | {m['seconds']:.1f} | {m.get('note', '')} |"
            )
    lines += ["", "## Run", "", "| script | seconds |", "|---|---:|"]
    for d in documents:
        lines.append(f"| {d['benchmark']} | {_number(d.get('seconds'))} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "results.md")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks")
    parser.add_argument("--full", action="store_true", help="full sizes (no --quick)")
    args = parser.parse_args()
    chosen = [(n, t) for n, t in SCRIPTS if not args.only or n in args.only]
    documents, statuses = [], []
    with tempfile.TemporaryDirectory(prefix="oncopipe-bench-") as tmp:
        for name, limit in chosen:
            print(f"running {name} ...", flush=True)
            document, status = run_script(name, limit * (6 if args.full else 1),
                                          Path(tmp) / f"{name}.json", full=args.full)  # fmt: skip
            print(f"  {status} ({document.get('seconds')} s)", flush=True)
            documents.append(document)
            statuses.append(status)
    args.out.write_text(render(documents, machine(), full=args.full), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if all(s == "ok" for s in statuses) else 1


if __name__ == "__main__":
    raise SystemExit(main())
