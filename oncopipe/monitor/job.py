"""The daily drift job: merge the day's histograms, compare them with the baseline, report.

Inputs: the per-sample histogram documents of one day (:func:`window_prefix`), and the
baseline that belongs to the approved model package (:func:`baseline_key`; written when a
model is approved, from the histograms of its training samples: :func:`baseline_document`).

Outputs, per monitor (``vaf/<assay>/<mode>``, and any named feature histogram the baseline
holds):

- CloudWatch metrics (namespace ``Oncopipe``, dimensions ``Environment`` and ``Monitor``):
  ``DriftPSI``, ``DriftJS``, ``DriftWasserstein`` and ``DriftWindowSamples``; and
  ``DriftScore`` (dimensions ``Environment`` and ``Monitor=<kind>``): the largest
  :data:`ALARM_DISTANCE` over the kind's evaluated strata, which the alarm watches. A window
  with fewer than the minimum samples publishes its sample count only, so the alarm (missing
  data: not breaching) does not see it.
- ``monitor/drift/<day>/report.json`` and ``report.png`` (both histograms of each monitor)
  in the artifacts bucket. Reports hold counts and distances only.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
NAMESPACE = "Oncopipe"
METRIC_NAMES = {"psi": "DriftPSI", "js": "DriftJS", "wasserstein": "DriftWasserstein"}
SCORE = "DriftScore"
SAMPLES = "DriftWindowSamples"
REPORTS_PREFIX = "monitor/drift/"
BASELINES_PREFIX = "monitor/baselines/"


def window_prefix(histograms_prefix: str, day: str) -> str:
    """Return the prefix of one day's per-sample histograms."""
    return f"{histograms_prefix}day={day}/"


def baseline_key(model_package_version: int) -> str:
    """Return the artifacts key of the baseline of a model package version."""
    return f"{BASELINES_PREFIX}v{model_package_version}/baseline.json"


def report_keys(day: str) -> tuple[str, str]:
    """Return the artifacts keys of a day's report (JSON, PNG)."""
    return f"{REPORTS_PREFIX}{day}/report.json", f"{REPORTS_PREFIX}{day}/report.png"


def _hist_doc(h: Histogram) -> dict[str, Any]:
    return {"edges": list(h.edges), "counts": list(h.counts), "samples": h.samples}


def _hist(doc: Mapping[str, Any]) -> Histogram:
    return Histogram(tuple(float(e) for e in doc["edges"]),
                     tuple(int(c) for c in doc["counts"]), int(doc["samples"]))  # fmt: skip


def baseline_document(
    vaf: Mapping[Stratum, Histogram],
    *,
    model_package_arn: str,
    features: Mapping[str, Histogram] | None = None,
) -> dict[str, Any]:
    """Return a baseline: the training samples' histograms, for one model package."""
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

    def score(self, kind: str) -> float | None:
        """Return the largest alarm distance of ``kind``'s evaluated monitors (or None)."""
        values = [r.distances.get(self.alarm_distance) for r in self.results
                  if r.distances is not None and r.monitor.split("/")[0] == kind]  # fmt: skip
        return max(values) if values else None

    def as_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data."""
        return {
            "day": self.day,
            "model_package_arn": self.model_package_arn,
            "alarm_distance": self.alarm_distance,
            "threshold": self.threshold,
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
) -> DriftReport:
    """Compare each window with its baseline monitor; return the report.

    A monitor of the baseline with no window (no sample that day) is reported with zero
    samples; a window without a baseline monitor is reported, not evaluated.

    Raises:
        HistogramError: the baseline is malformed, or a window's bins differ from it.
    """
    try:
        monitors = {name: _hist(doc) for name, doc in baseline["monitors"].items()}
        arn = str(baseline["model_package_arn"])
    except (KeyError, TypeError, ValueError) as e:
        raise HistogramError(f"baseline lacks or mistypes {e}") from e
    results = []
    for name in sorted(set(monitors) | set(windows)):
        reference = monitors.get(name)
        window = windows.get(name) or Histogram.empty(reference.edges if reference else VAF_EDGES)
        if reference is None:
            results.append(MonitorResult(name, window.samples, window.total, None, False,
                                         "no baseline for this stratum"))  # fmt: skip
            continue
        if not rule.counts(window):
            results.append(MonitorResult(name, window.samples, window.total, None, False,
                                         f"fewer than {rule.min_samples} samples"))  # fmt: skip
            continue
        d = distances(reference, window)
        results.append(MonitorResult(name, window.samples, window.total, d,
                                     rule.breaching(d.get(ALARM_DISTANCE))))  # fmt: skip
    return DriftReport(day, arn, ALARM_DISTANCE, rule.threshold, tuple(results))


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
        datum(SAMPLES, r.monitor, r.samples, "Count")
        if r.distances is not None:
            for key, metric in METRIC_NAMES.items():
                datum(metric, r.monitor, r.distances.get(key))
    for kind in sorted({r.monitor.split("/")[0] for r in report.results}):
        score = report.score(kind)
        if score is not None:
            datum(SCORE, kind, score)
    return data


def render_png(report: DriftReport, baseline: Mapping[str, Any],
               windows: Mapping[str, Histogram]) -> bytes:  # fmt: skip
    """Return a PNG with the baseline and window histograms (proportions) of each monitor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.monitor for r in report.results]
    fig, axes = plt.subplots(max(len(names), 1), 1, figsize=(8, 2.6 * max(len(names), 1)),
                             squeeze=False)  # fmt: skip
    for ax, result in zip(axes[:, 0], report.results, strict=False):
        for label, doc, style in (
            ("baseline", baseline["monitors"].get(result.monitor), "-"),
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
        ax.legend(fontsize=8)
    fig.suptitle(f"drift {report.day} (alarm: {report.alarm_distance} > {report.threshold})")
    fig.tight_layout()
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
) -> DriftReport:
    """Run the drift job for ``day``: read, compare, publish, write the report.

    Raises:
        HistogramError: a malformed histogram or baseline.
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
    report = compare(baseline, windows, day=day, rule=rule)
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
