"""The daily drift job: merge the day's histograms, compare them with the baseline, report.

Inputs: the per-sample histogram documents of one day (:func:`window_prefix`), and the
baseline that belongs to the approved model package (:func:`baseline_key`; written when a
model is approved, from the histograms of its training samples: :func:`baseline_document`).

Outputs, per monitor (``vaf/<assay>/<mode>``, and the named feature histograms the baseline
holds: ``radiomics/<feature>``, ``notes/concepts``, ``predictions/probability``, whose
windows :mod:`oncopipe.monitor.modalities` reads and the caller passes in):

- CloudWatch metrics (namespace ``Oncopipe``, dimensions ``Environment`` and ``Monitor``):
  ``DriftPSI``, ``DriftJS``, ``DriftWasserstein`` and ``DriftWindowSamples``; and
  ``DriftScore`` (dimensions ``Environment`` and ``Monitor=<kind>``): the largest alarm
  distance (:func:`alarm_distance`) over the kind's evaluated monitors, which the kind's
  alarm watches. A window with fewer than the minimum samples publishes its sample count
  only, so the alarm (missing data: not breaching) does not see it. The kinds of
  :data:`SUMMARY_ONLY_KINDS` (radiomics: one monitor per model feature, 1,316 in v1)
  publish ``DriftScore`` and their largest ``DriftWindowSamples`` under ``Monitor=<kind>``
  only: per-feature metrics would be thousands of custom metrics; the report has them.
- ``monitor/drift/<day>/report.json`` and ``report.png`` (both histograms of each monitor;
  of a kind with more than :data:`PNG_MONITORS_PER_KIND` monitors, the most distant ones)
  in the artifacts bucket. Reports hold counts and distances only.

Each kind has its own rule (``rules``; default: the VAF rule): one threshold cannot serve
VAF strata of hundreds of calls and a window of ten patients' predictions.
:data:`KIND_THRESHOLDS` are the defaults of the others.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from oncopipe.monitor.distances import Distances, distances
from oncopipe.monitor.histogram import (
    VAF_EDGES,
    Histogram,
    HistogramError,
    Stratum,
    from_document,
)
from oncopipe.monitor.window import AlarmRule, merge_by_stratum

logger = logging.getLogger(__name__)

#: The distance the alarm watches (see the README's detection table for why).
ALARM_DISTANCE = "wasserstein"
#: Kinds whose alarm watches another distance: a category order has no meaning for W1.
ALARM_DISTANCES = {"notes": "js"}
#: Default thresholds of the kinds other than VAF: about the 99th percentile of simulated
#: windows of 10 samples (the default minimum) without drift. Radiomics: the largest W1
#: over 200 independent features, in baseline quantiles; notes: JS over 40 tokens;
#: predictions: W1 in probability. Recalibrate on real windows.
KIND_THRESHOLDS = {"radiomics": 0.4, "notes": 0.5, "predictions": 0.18}
#: Kinds that publish per-kind metrics only (see the module doc).
SUMMARY_ONLY_KINDS = frozenset({"radiomics"})
#: Monitors of one kind the PNG shows at most.
PNG_MONITORS_PER_KIND = 8
NAMESPACE = "Oncopipe"
METRIC_NAMES = {"psi": "DriftPSI", "js": "DriftJS", "wasserstein": "DriftWasserstein"}
SCORE = "DriftScore"
SAMPLES = "DriftWindowSamples"
REPORTS_PREFIX = "monitor/drift/"
BASELINES_PREFIX = "monitor/baselines/"


def kind_of(monitor: str) -> str:
    """Return a monitor's kind: ``vaf`` of ``vaf/panel-v1/paired``."""
    return monitor.split("/", 1)[0]


def alarm_distance(kind: str) -> str:
    """Return the distance ``kind``'s score and alarm use."""
    return ALARM_DISTANCES.get(kind, ALARM_DISTANCE)


def kind_rules(rule: AlarmRule, thresholds: Mapping[str, float]) -> dict[str, AlarmRule]:
    """Return ``rule`` with each kind's threshold of ``thresholds``, by kind."""
    return {kind: replace(rule, threshold=t) for kind, t in thresholds.items()}


def window_prefix(histograms_prefix: str, day: str) -> str:
    """Return the prefix of one day's per-sample histograms."""
    return f"{histograms_prefix}day={day}/"


def baseline_key(model_package_version: int) -> str:
    """Return the artifacts key of the baseline of a model package version."""
    return f"{BASELINES_PREFIX}v{model_package_version}/baseline.json"


def report_keys(day: str) -> tuple[str, str]:
    """Return the artifacts keys of a day's report (JSON, PNG)."""
    return f"{REPORTS_PREFIX}{day}/report.json", f"{REPORTS_PREFIX}{day}/report.png"


def _hist_doc(h: Histogram | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(h, Histogram):
        return {"edges": list(h.edges), "counts": list(h.counts), "samples": h.samples}
    try:  # a monitor document (edges, counts, samples and its binning's keys)
        checked = _hist(h)
    except (KeyError, TypeError, ValueError) as e:
        raise HistogramError(f"monitor document lacks or mistypes {e}") from e
    return {**h, **_hist_doc(checked)}


def _hist(doc: Mapping[str, Any]) -> Histogram:
    return Histogram(tuple(float(e) for e in doc["edges"]),
                     tuple(int(c) for c in doc["counts"]), int(doc["samples"]))  # fmt: skip


def baseline_document(
    vaf: Mapping[Stratum, Histogram],
    *,
    model_package_arn: str,
    features: Mapping[str, Histogram | Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return a baseline: the training samples' histograms, for one model package.

    ``features`` are histograms or monitor documents by monitor name (the builders of
    :mod:`oncopipe.monitor.modalities` return documents: their bins' cuts or labels).

    Raises:
        HistogramError: a malformed monitor document.
    """
    monitors = {f"vaf/{s.name}": _hist_doc(h) for s, h in vaf.items()}
    monitors.update({name: _hist_doc(h) for name, h in (features or {}).items()})
    return {"format": 1, "model_package_arn": model_package_arn, "monitors": monitors}


@dataclass(frozen=True)
class MonitorResult:
    """One monitor's window against its baseline (``distances`` None: not evaluated)."""

    monitor: str
    samples: int
    calls: int
    distances: Distances | None
    breaching: bool
    note: str = ""


@dataclass(frozen=True)
class DriftReport:
    """A day's drift report."""

    day: str
    model_package_arn: str
    alarm_distance: str
    threshold: float
    results: tuple[MonitorResult, ...]
    #: Thresholds of the kinds with their own rule (others: ``threshold``).
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def score(self, kind: str) -> float | None:
        """Return the largest alarm distance of ``kind``'s evaluated monitors (or None)."""
        values = [r.distances.get(alarm_distance(kind)) for r in self.results
                  if r.distances is not None and kind_of(r.monitor) == kind]  # fmt: skip
        return max(values) if values else None

    def kinds(self) -> list[str]:
        """Return the kinds of the report's monitors, sorted."""
        return sorted({kind_of(r.monitor) for r in self.results})

    def as_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "day": self.day,
            "model_package_arn": self.model_package_arn,
            "alarm_distance": self.alarm_distance,
            "threshold": self.threshold,
            "kinds": {k: {"alarm_distance": alarm_distance(k), "score": self.score(k),
                          "threshold": self.thresholds.get(k, self.threshold)}
                      for k in self.kinds()},
            "monitors": [
                {"monitor": r.monitor, "samples": r.samples, "calls": r.calls,
                 "distances": r.distances.as_dict() if r.distances else None,
                 "breaching": r.breaching, "note": r.note}
                for r in self.results
            ],
        }  # fmt: skip


def compare(
    baseline: Mapping[str, Any],
    windows: Mapping[str, Histogram],
    *,
    day: str,
    rule: AlarmRule,
    rules: Mapping[str, AlarmRule] | None = None,
    unavailable: Mapping[str, str] | None = None,
) -> DriftReport:
    """Compare each window with its baseline monitor; return the report.

    A monitor of the baseline with no window (no sample that day) is reported with zero
    samples; a window without a baseline monitor, or with an empty one, is reported, not
    evaluated (one empty monitor must not stop the others). ``rules``
    (by kind) replace ``rule`` for their kinds; the monitors of a kind in ``unavailable``
    (kind -> why its window was not read) are reported with that note, not evaluated.

    Raises:
        HistogramError: the baseline is malformed, or a window's bins differ from it.
    """
    try:
        monitors = {name: _hist(doc) for name, doc in baseline["monitors"].items()}
        arn = str(baseline["model_package_arn"])
    except (KeyError, TypeError, ValueError) as e:
        raise HistogramError(f"baseline lacks or mistypes {e}") from e
    rules, unavailable = dict(rules or {}), dict(unavailable or {})
    results = []
    for name in sorted(set(monitors) | set(windows)):
        reference, kind = monitors.get(name), kind_of(name)
        kind_rule = rules.get(kind, rule)
        window = windows.get(name) or Histogram.empty(reference.edges if reference else VAF_EDGES)
        if kind in unavailable:
            note = unavailable[kind] or "window not read"
        elif reference is None:
            note = "no baseline for this stratum"
        elif reference.total <= 0:  # nothing to compare with: reported, not evaluated
            note = "the baseline of this monitor is empty"
        elif not kind_rule.counts(window):
            note = f"fewer than {kind_rule.min_samples} samples"
        else:
            note = ""
        if reference is None or note:
            results.append(MonitorResult(name, window.samples, window.total, None, False, note))
            continue
        d = distances(reference, window)
        results.append(MonitorResult(name, window.samples, window.total, d,
                                     kind_rule.breaching(d.get(alarm_distance(kind)))))  # fmt: skip
    return DriftReport(day, arn, ALARM_DISTANCE, rule.threshold, tuple(results),
                       {k: r.threshold for k, r in rules.items()})  # fmt: skip


def vaf_windows(documents: Iterable[Mapping[str, Any]]) -> dict[str, Histogram]:
    """Return the day's VAF window per monitor name (``vaf/<assay>/<mode>``).

    Raises:
        HistogramError: a malformed document, or one on other bins.
    """
    merged = merge_by_stratum((from_document(d) for d in documents), VAF_EDGES)
    return {f"vaf/{s.name}": h for s, h in merged.items()}


def metric_data(report: DriftReport, environment: str) -> list[dict[str, Any]]:
    """Return the CloudWatch ``MetricData`` of a report (see the module doc)."""
    data: list[dict[str, Any]] = []

    def datum(name: str, monitor: str, value: float, unit: str = "None") -> None:
        data.append({"MetricName": name, "Value": float(value), "Unit": unit,
                     "Dimensions": [{"Name": "Environment", "Value": environment},
                                    {"Name": "Monitor", "Value": monitor}]})  # fmt: skip

    for r in report.results:
        if kind_of(r.monitor) in SUMMARY_ONLY_KINDS:
            continue
        datum(SAMPLES, r.monitor, r.samples, "Count")
        if r.distances is not None:
            for key, metric in METRIC_NAMES.items():
                datum(metric, r.monitor, r.distances.get(key))
    for kind in report.kinds():
        if kind in SUMMARY_ONLY_KINDS:
            datum(SAMPLES, kind, max(r.samples for r in report.results
                                     if kind_of(r.monitor) == kind), "Count")  # fmt: skip
        score = report.score(kind)
        if score is not None:
            datum(SCORE, kind, score)
    return data


def _shown(report: DriftReport) -> list[MonitorResult]:
    """Return the monitors the PNG shows: all, or a large kind's most distant ones."""
    shown: list[MonitorResult] = []
    for kind in report.kinds():
        results = [r for r in report.results if kind_of(r.monitor) == kind]
        if len(results) > PNG_MONITORS_PER_KIND:
            results = sorted(results, key=lambda r: -r.distances.get(alarm_distance(kind))
                             if r.distances else 0.0)[:PNG_MONITORS_PER_KIND]  # fmt: skip
        shown += results
    return shown


def render_png(report: DriftReport, baseline: Mapping[str, Any],
               windows: Mapping[str, Histogram]) -> bytes:  # fmt: skip
    """Return a PNG with the baseline and window histograms (proportions) of each monitor.

    Of a kind with more than :data:`PNG_MONITORS_PER_KIND` monitors, it shows the ones with
    the largest alarm distance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = _shown(report)
    fig, axes = plt.subplots(max(len(shown), 1), 1, figsize=(8, 2.6 * max(len(shown), 1)),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, result in zip(axes[:, 0], shown, strict=False):
        reference = baseline["monitors"].get(result.monitor)
        for label, doc, style in (
            ("baseline", reference, "-"),
            ("window", _hist_doc(windows[result.monitor]) if result.monitor in windows
             else None, "--"),
        ):  # fmt: skip
            if doc is None or not sum(doc["counts"]):
                continue
            total = sum(doc["counts"])
            ax.stairs([c / total for c in doc["counts"]], doc["edges"], label=label,
                      linestyle=style)  # fmt: skip
        d = result.distances
        title = (f"{result.monitor}: {result.samples} samples" + (
            f", PSI {d.psi:.3f}, JS {d.js:.3f}, W1 {d.wasserstein:.4f}" if d else
            f" ({result.note})"))  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("proportion")
        binning = (reference or {}).get("binning")
        if binning == "categorical":  # the labels of the bins 0 ... K
            labels = list(reference["categories"])  # type: ignore[index]
            ax.set_xticks([i + 0.5 for i in range(len(labels))], labels, rotation=90,
                          fontsize=5)  # fmt: skip
        elif binning == "quantile":
            ax.set_xlabel("baseline quantile", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    rules = ", ".join(f"{k} {alarm_distance(k)} > {report.thresholds.get(k, report.threshold)}"
                      for k in report.kinds())  # fmt: skip
    fig.suptitle(f"drift {report.day}\nalarm: {rules or report.threshold}", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def run(
    *,
    s3: Any,
    cloudwatch: Any,
    curated_bucket: str,
    histograms_prefix: str,
    artifacts_bucket: str,
    baseline: Mapping[str, Any],
    day: str,
    rule: AlarmRule,
    environment: str,
    feature_windows: Mapping[str, Histogram] | None = None,
    rules: Mapping[str, AlarmRule] | None = None,
    unavailable: Mapping[str, str] | None = None,
) -> DriftReport:
    """Run the drift job for ``day``: read, compare, publish, write the report.

    ``feature_windows`` are the day's windows of the other monitors, by name (read with
    :mod:`oncopipe.monitor.modalities`); ``rules`` and ``unavailable`` as for
    :func:`compare`.

    Raises:
        HistogramError: a malformed histogram or baseline, or a feature window named like
            a VAF monitor.
        botocore.exceptions.ClientError: S3 or CloudWatch refused a call.
    """
    documents = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=curated_bucket,
                                   Prefix=window_prefix(histograms_prefix, day)):  # fmt: skip
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=curated_bucket, Key=item["Key"])["Body"].read()
            documents.append(json.loads(body))
    windows = vaf_windows(documents)
    for name, window in (feature_windows or {}).items():
        if kind_of(name) == "vaf":
            raise HistogramError(f"feature window {name}: vaf/ monitors come from the histograms")
        windows[name] = window
    report = compare(baseline, windows, day=day, rule=rule, rules=rules, unavailable=unavailable)
    data = metric_data(report, environment)
    for start in range(0, len(data), 1000):
        cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data[start : start + 1000])
    json_key, png_key = report_keys(day)
    s3.put_object(Bucket=artifacts_bucket, Key=json_key, ContentType="application/json",
                  Body=json.dumps(report.as_dict(), indent=2).encode("utf-8"))  # fmt: skip
    s3.put_object(Bucket=artifacts_bucket, Key=png_key, ContentType="image/png",
                  Body=render_png(report, baseline, windows))  # fmt: skip
    logger.info("drift %s: %d monitors, %d samples", day, len(report.results),
                sum(r.samples for r in report.results))  # fmt: skip
    return report
