"""The run report: one self-contained HTML page per run (``oncopipe report RUN --out``).

Sections, each with a stable id (tests and links rely on them): ``items-per-stage``,
``quarantines``, ``durations``, ``cost``, ``time-to-insight``, ``drift``, ``plots``. The
page has inline CSS, plots embedded as base64 PNG, no script and no external URL, so it
can be mailed or archived as one file.

Privacy. The data come from the run's manifests in both zones. The page shows steps,
counts, reason *codes*, timings, costs and pseudonymous patient keys only: never an item
name (PHI-zone items are ingest keys, which can name patients) and never a readable
quarantine reason (those documents sit beside the quarantined copies in the quarantine
zone and can quote file names). Every value from data is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oncopipe.layout import Buckets
from oncopipe.manifest import COMMITTED, iter_manifests
from oncopipe.ops.cost_report import CostReport, cost_report
from oncopipe.ops.insight import MODALITIES, PatientInsight, insight_from_manifests

SECTION_IDS = (
    "items-per-stage",
    "quarantines",
    "durations",
    "cost",
    "time-to-insight",
    "drift",
    "plots",
)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_PLOT_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True)
class StageCounts:
    """Items of one step: how many, and how many in each status."""

    step: str
    zone: str  # "phi" (quarantine bucket) or "curated"
    items: int
    statuses: Mapping[str, int]
    outputs: int


@dataclass(frozen=True)
class StageDuration:
    """Seconds the items of one step took (from the manifests' ``seconds``)."""

    step: str
    items: int
    total_s: float
    median_s: float
    max_s: float


@dataclass(frozen=True)
class Plot:
    """A PNG to embed, with its caption."""

    caption: str
    png: bytes


@dataclass
class RunData:
    """Everything the report shows about one run."""

    run_id: str
    stages: list[StageCounts]
    quarantines: list[tuple[str, str, int]]  # (step, reason code, count)
    durations: list[StageDuration]
    span: tuple[datetime, datetime] | None
    cost: CostReport
    insight: list[PatientInsight]
    drift: list[Mapping[str, Any]] = field(default_factory=list)
    drift_note: str = "no drift check has reported for this run"
    plots: list[Plot] = field(default_factory=list)
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _status(document: Mapping[str, Any]) -> str:
    if document.get("status", COMMITTED) != COMMITTED:
        return "retracted"
    return str((document.get("summary") or {}).get("status") or "committed")


def _reason_code(document: Mapping[str, Any]) -> str | None:
    summary = document.get("summary") or {}
    if document.get("status", COMMITTED) != COMMITTED or summary.get("status") == "quarantined":
        code = (
            document.get("reason_code")
            or summary.get("reason_code")
            or (document.get("error") or {}).get("reason_code")
        )
        return str(code or "unspecified")
    return None


def _at(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None


def summarize_manifests(
    phi: Sequence[Mapping[str, Any]], curated: Sequence[Mapping[str, Any]]
) -> tuple[list[StageCounts], list[tuple[str, str, int]], list[StageDuration],
           tuple[datetime, datetime] | None]:  # fmt: skip
    """Return items per stage, quarantine reason codes, durations and the run's span.

    ``phi`` and ``curated``: every manifest of the run in each zone, tombstones included.
    """
    stages: list[StageCounts] = []
    reasons: Counter[tuple[str, str]] = Counter()
    seconds: dict[str, list[float]] = {}
    stamps: list[datetime] = []
    for zone, documents in (("phi", phi), ("curated", curated)):
        by_step: dict[str, list[Mapping[str, Any]]] = {}
        for document in documents:
            by_step.setdefault(str(document.get("step", "-")), []).append(document)
        for step, group in sorted(by_step.items()):
            statuses = Counter(_status(d) for d in group)
            outputs = sum(len(d.get("outputs", [])) for d in group)
            stages.append(StageCounts(step, zone, len(group), dict(sorted(statuses.items())),
                                      outputs))  # fmt: skip
            for d in group:
                code = _reason_code(d)
                if code:
                    reasons[(step, code)] += 1
                if d.get("status", COMMITTED) == COMMITTED:
                    seconds.setdefault(step, []).append(float(d.get("seconds") or 0.0))
                stamps += [t for t in (_at(d.get("started_at")), _at(d.get("finished_at"))) if t]
    durations = [StageDuration(step, len(v), sum(v), statistics.median(v), max(v))
                 for step, v in sorted(seconds.items()) if v]  # fmt: skip
    quarantines = [(s, c, n) for (s, c), n in sorted(reasons.items())]
    return stages, quarantines, durations, ((min(stamps), max(stamps)) if stamps else None)


def load_plots(paths: Iterable[Path]) -> list[Plot]:
    """Return the PNG plots among ``paths`` (others are skipped: only PNG is embedded).

    Raises:
        ValueError: a PNG larger than :data:`MAX_PLOT_BYTES` (the page is mailed around).
    """
    plots = []
    for path in paths:
        data = path.read_bytes()
        if not data.startswith(_PNG_MAGIC):
            continue
        if len(data) > MAX_PLOT_BYTES:
            raise ValueError(f"{path.name}: plot larger than {MAX_PLOT_BYTES} bytes")
        plots.append(Plot(caption=path.stem.replace("_", " "), png=data))
    return plots


def drift_rows(document: Mapping[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Return the drift section's rows and note from ``oncopipe ops drift --format json``.

    One row per stack: status, coverage, drifted resources and critical drifts not
    allowed. Property values (``expected``/``actual``) are not shown: the drift report has
    them for whoever needs them.
    """
    rows = []
    for stack in document.get("stacks", []):
        drifts = stack.get("drifts", [])
        critical = sum(d.get("severity") == "critical" and not d.get("allowed") for d in drifts)
        coverage = stack.get("coverage")
        rows.append({
            "stack": stack.get("name", ""),
            "status": stack.get("status", ""),
            "coverage": "-" if coverage is None else f"{float(coverage):.0%}",
            "drifted resources": stack.get("drifted_resources", 0),
            "critical (not allowed)": critical,
        })  # fmt: skip
    when = document.get("generated_at", "")
    env = document.get("environment", "")
    note = f"CloudFormation drift of environment {env}, detected {when}" if rows else (
        "the drift report lists no stack")  # fmt: skip
    return rows, note


def collect(
    store: Any,
    buckets: Buckets,
    run_id: str,
    *,
    cost_explorer: Any | None = None,
    drift: Sequence[Mapping[str, Any]] | None = None,
    drift_note: str | None = None,
    plots: Sequence[Path] = (),
) -> RunData:
    """Read a run's manifests (both zones) and return what its report shows.

    ``cost_explorer``: a Cost Explorer client for the actual cost (None: estimates only).
    ``drift``: rows of the drift check (any flat mappings; shown as a table).

    Raises:
        Whatever the object store raises (the caller needs read access to the manifests
        of the quarantine and curated buckets).
    """
    phi = list(iter_manifests(store, buckets.quarantine, run_id, include_retracted=True))
    curated = list(iter_manifests(store, buckets.curated, run_id, include_retracted=True))
    stages, quarantines, durations, span = summarize_manifests(phi, curated)
    committed_phi = [d for d in phi if d.get("status", COMMITTED) == COMMITTED]
    committed_curated = [d for d in curated if d.get("status", COMMITTED) == COMMITTED]
    deployed = any(d.get("step") == "predict" for d in committed_curated)
    data = RunData(
        run_id=run_id,
        stages=stages,
        quarantines=quarantines,
        durations=durations,
        span=span,
        cost=cost_report(run_id, [*committed_phi, *committed_curated], cost_explorer),
        insight=insight_from_manifests(committed_phi, committed_curated, model_deployed=deployed),
        drift=list(drift or []),
        plots=load_plots(plots),
    )
    if drift_note is not None:
        data.drift_note = drift_note
    elif drift:
        data.drift_note = ""
    return data


# -- rendering -----------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:70rem;
color:#1b1f24;padding:0 1rem}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.25rem}table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;font-size:.9rem}
th{background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#57606a;font-size:.9rem}figure{display:inline-block;margin:.5rem 1rem .5rem 0}
img{max-width:32rem;border:1px solid #d0d7de}code{font-size:.85rem}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                         for i, v in enumerate(row)) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _note(text: str) -> str:
    return f'<p class="note">{_e(text)}</p>' if text else ""


def _usd(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def _delta(row: PatientInsight, moment: datetime | None) -> str:
    seconds = row.seconds_to(moment)
    if seconds is None:
        return "-"
    minutes, secs = divmod(max(seconds, 0.0), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)}h{int(minutes):02d}m{secs:04.1f}s" if hours else (
        f"{int(minutes)}m{secs:04.1f}s" if minutes else f"{secs:.1f}s")  # fmt: skip


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{_e(title)}</h2>{body}</section>'


def render(data: RunData) -> str:
    """Return the report page of a run (a complete HTML document)."""
    stages = _table(
        ["step", "zone", "items", "by status", "outputs"],
        ([s.step, s.zone, s.items, ", ".join(f"{k} {v}" for k, v in s.statuses.items()),
          s.outputs] for s in data.stages),
        {2, 4},
    ) if data.stages else _note("no manifests for this run")  # fmt: skip
    quarantine_body = (
        _table(["step", "reason code", "items"], data.quarantines, {2})
        if data.quarantines
        else _note("nothing was quarantined")
    ) + _note(
        "Reason codes and counts only: the readable reasons are in the quarantine (PHI) "
        "zone beside each quarantined copy, as they can name files."
    )
    span = ""
    if data.span:
        start, end = data.span
        span = _note(f"run span {start.isoformat()} to {end.isoformat()} "
                     f"({(end - start).total_seconds():.1f} s)")  # fmt: skip
    durations = span + (_table(
        ["step", "items", "total s", "median s", "max s"],
        ([d.step, d.items, f"{d.total_s:.2f}", f"{d.median_s:.2f}", f"{d.max_s:.2f}"]
         for d in data.durations),
        {1, 2, 3, 4},
    ) if data.durations else _note("no committed items"))  # fmt: skip
    cost = data.cost
    by_stage: dict[str, list[float | None]] = {}
    for row in cost.rows:
        est, act = by_stage.setdefault(row.stage, [None, None])
        by_stage[row.stage] = [_add(est, row.estimate_usd), _add(act, row.actual_usd)]
    cost_body = (
        _table(["stage", "estimate USD", "actual USD"],
               ([s, _usd(v[0]), _usd(v[1])] for s, v in sorted(by_stage.items())), {1, 2})
        + _table(["stage", "sample", "items", "estimate USD", "actual USD", "unpriced"],
                 ([r.stage, r.sample, r.items, _usd(r.estimate_usd), _usd(r.actual_usd),
                   r.unpriced] for r in cost.rows), {2, 3, 4, 5})
        + _note(f"estimate total {cost.estimate_total:.4f} USD"
                + (f", actual total {cost.actual_total:.4f} USD" if cost.actual_available else "")
                + (f"; prices as of {', '.join(cost.price_as_of)}" if cost.price_as_of else ""))
        if cost.rows else _note("no job of this run recorded a cost estimate")
    ) + _note(cost.note)  # fmt: skip
    insight = (
        _table(["patient key", "first ingest (UTC)", *(f"{m} query-able" for m in MODALITIES),
                "all features", "prediction"],
               ([r.patient_key, r.first_ingest_at.isoformat() if r.first_ingest_at else "-",
                 *(_delta(r, r.features_at.get(m)) for m in MODALITIES),
                 _delta(r, r.all_features_at),
                 _delta(r, r.prediction_at) if r.prediction_at else r.prediction_note]
                for r in data.insight), set())
        + _note("Times from the patient's first ingest object (its route manifest) to the "
                "commit of each modality's features, and to the prediction.")
        if data.insight else _note("no patient in this run")
    )  # fmt: skip
    if data.drift:
        columns = list(dict.fromkeys(k for row in data.drift for k in row))
        drift = _table(columns, ([row.get(c, "") for c in columns] for row in data.drift), set())
    else:
        drift = ""
    drift += _note(data.drift_note)
    plots = "".join(
        f'<figure><img alt="{_e(p.caption)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.png).decode("ascii")}"><figcaption>{_e(p.caption)}</figcaption>'
        "</figure>"
        for p in data.plots
    ) or _note("no plots were produced for this run")  # fmt: skip
    body = "".join([
        _section("items-per-stage", "Items per stage", stages),
        _section("quarantines", "Quarantines", quarantine_body),
        _section("durations", "Durations", durations),
        _section("cost", "Cost per stage and sample", cost_body),
        _section("time-to-insight", "Time to insight per patient", insight),
        _section("drift", "Drift", drift),
        _section("plots", "Plots", plots),
    ])  # fmt: skip
    title = f"oncopipe run {data.run_id}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>"
        + _note(f"generated {data.generated_at.isoformat()}; pseudonymous keys only")
        + body
        + "</body></html>\n"
    )


def write_report(data: RunData, out: Path) -> Path:
    """Write the report page; return its resolved path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(data), encoding="utf-8")
    return out.resolve()
