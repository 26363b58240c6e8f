"""What every benchmark script shares: result rows, ``--json`` output, child-process memory.

A benchmark prints its table for people and, with ``--json PATH``, writes the same figures as
rows ``benchmarks/run_all.py`` collects into ``benchmarks/results.md`` without parsing prose.

A row is one comparison: ``ours`` against ``baseline`` (what a user would run instead), the
``ratio`` in the direction the ``goal`` is stated, and ``passed`` (None when the row has no
goal or is not measured here). Peak memory is measured in a child process
(:func:`run_child`): the child reports, at exit, the larger of its own ``VmHWM`` (reset by
``exec``, unlike ``ru_maxrss``, which a child inherits from a large parent such as pytest)
and its waited-for descendants' ``ru_maxrss`` (bwa, samtools, forked from the small
child), i.e. the largest single process of the stage.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Fields every row of a ``--json`` document carries (the results table's columns).
ROW_FIELDS = ("benchmark", "metric", "ours", "baseline", "ratio", "goal", "passed", "unit")


@dataclass
class Row:
    """One line of the results table.

    Attributes:
        benchmark: the script (``genomics``, ``imaging`` ...).
        metric: what is compared, e.g. ``VCF -> Parquet rows/s vs bcftools query -> TSV``.
        ours: our figure (``unit``), None when not measured here.
        baseline: the alternative's figure, None when there is none.
        ratio: ours against the baseline, in the goal's direction (None without a baseline).
        goal: the goal as text (``>= 1.0x``), empty when the row has none.
        passed: True/False against the goal; None when there is no goal or no figure.
        unit: the unit of ``ours`` and ``baseline``.
        note: anything the reader needs (input size, why not measured).
    """

    benchmark: str
    metric: str
    ours: float | None
    baseline: float | None
    ratio: float | None
    goal: str
    passed: bool | None
    unit: str
    note: str = ""


@dataclass
class Memory:
    """Peak RSS of one stage on one input (measured in a child process)."""

    stage: str
    input: str
    input_mb: float
    peak_rss_mb: float
    seconds: float
    note: str = ""


@dataclass
class Report:
    """The machine-readable output of one benchmark run."""

    benchmark: str
    quick: bool
    rows: list[Row] = field(default_factory=list)
    memory: list[Memory] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, metric: str, ours: float | None, baseline: float | None, *, goal: str = "",
            unit: str = "", ratio: float | None = None, passed: bool | None = None,
            note: str = "") -> Row:  # fmt: skip
        """Append a row; ``ratio`` defaults to ours / baseline when both are there."""
        if ratio is None and ours is not None and baseline:
            ratio = ours / baseline
        row = Row(self.benchmark, metric, ours, baseline, ratio, goal, passed, unit, note)
        self.rows.append(row)
        return row

    def write(self, path: Path | None) -> None:
        """Write the report as JSON to ``path`` (nothing when None)."""
        if path is None:
            return
        document = {
            "benchmark": self.benchmark,
            "quick": self.quick,
            "machine": machine(),
            "rows": [asdict(r) for r in self.rows],
            "memory": [asdict(m) for m in self.memory],
            "extra": self.extra,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=1, default=str), encoding="utf-8")


def machine() -> dict[str, Any]:
    """Return the facts a reader needs to compare figures across machines."""
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def json_path(argv: list[str] | None = None) -> Path | None:
    """Return the ``--json PATH`` argument of a script without an argparse parser."""
    argv = sys.argv if argv is None else argv
    if "--json" in argv:
        index = argv.index("--json")
        if index + 1 >= len(argv):
            raise SystemExit("--json needs a file path")
        return Path(argv[index + 1])
    return None


@dataclass(frozen=True)
class ChildRun:
    """What :func:`run_child` measured: wall seconds, CPU seconds, peak RSS (MiB)."""

    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    stdout: str


def run_child(code: str, *, env: dict[str, str] | None = None) -> ChildRun:
    """Run ``code`` in a fresh Python (repo on its path); return its time, CPU and peak RSS.

    Raises:
        RuntimeError: the child failed (its last stderr lines in the message).
    """
    read_fd, write_fd = os.pipe()
    script = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
              f"import atexit as _a, os as _o, resource as _r\n"
              f"def _peak():\n"
              f"    own = 0\n"
              f"    with open('/proc/self/status') as f:\n"
              f"        for line in f:\n"
              f"            if line.startswith('VmHWM:'):\n"
              f"                own = int(line.split()[1])\n"
              f"    kids = _r.getrusage(_r.RUSAGE_CHILDREN).ru_maxrss\n"
              f"    _o.write({write_fd}, str(max(own, kids)).encode())\n"
              f"_a.register(_peak)\n{code}")  # fmt: skip
    started = time.perf_counter()
    command = [sys.executable, "-c", script]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          pass_fds=(write_fd,)) as child:  # fmt: skip
        os.close(write_fd)
        # read the pipes first (a full pipe would block the child), then reap with wait4
        out, err = child.stdout.read(), child.stderr.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    with os.fdopen(read_fd, "rb") as peak:
        reported = peak.read().decode() or "0"
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        tail = "\n".join(err.decode(errors="replace").splitlines()[-5:])
        raise RuntimeError(f"benchmark child failed (exit {child.returncode}): {tail}")
    rss_kib = int(reported)  # Linux: KiB
    return ChildRun(seconds, usage.ru_utime + usage.ru_stime, rss_kib / 1024,
                    out.decode(errors="replace"))  # fmt: skip


def self_peak_rss_mb() -> float:
    """Return this process's own peak RSS in MiB (Linux ``ru_maxrss`` is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def linear_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Return (a, b) of ``y = a + b x`` through two or more (x, y) points (least squares)."""
    n = len(points)
    if n < 2:
        raise ValueError("linear_fit needs two points")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b
