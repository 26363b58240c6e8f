"""Fixed-bin histograms: the per-sample VAF histogram the variants stage writes.

A histogram is counts on fixed bin edges, so a window of samples is the sum of their
histograms and nothing re-reads a VCF. The VAF edges are finer below 0.1, where the
subclonal and low-purity calls (and most caller artefacts) sit.

Only PASS calls with a depth of at least :data:`MIN_DEPTH` count. Each histogram belongs to
one stratum: the assay (panel) and whether the sample was called against a matched normal
(``paired``) or alone (``tumour_only``): tumour-only calls carry germline variants near 0.5
and 1.0, so the two are never mixed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: VAF bin edges: 0.01 wide below 0.1, 0.05 wide above (a closed last bin includes 1.0).
VAF_EDGES: tuple[float, ...] = tuple(
    [round(0.01 * i, 2) for i in range(10)] + [round(0.1 + 0.05 * i, 2) for i in range(19)]
)
#: Reads a call needs at its position to enter the histogram.
MIN_DEPTH = 20
#: Histogram document format version.
FORMAT_VERSION = 1
MODES = ("paired", "tumour_only")


class HistogramError(ValueError):
    """A histogram document or operation is invalid; the message says which field."""


@dataclass(frozen=True)
class Histogram:
    """Counts on fixed bin ``edges`` (len(counts) == len(edges) - 1) over ``samples``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    samples: int = 1

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or len(self.counts) != len(self.edges) - 1:
            raise HistogramError(
                f"{len(self.counts)} counts for {len(self.edges)} edges (need edges - 1)"
            )
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise HistogramError("bin edges must increase strictly")
        if any(c < 0 for c in self.counts) or self.samples < 0:
            raise HistogramError("counts and samples must be >= 0")

    @property
    def total(self) -> int:
        """Return the number of values counted."""
        return int(sum(self.counts))

    @property
    def centres(self) -> np.ndarray:
        """Return the bin centres."""
        edges = np.asarray(self.edges)
        return np.asarray((edges[:-1] + edges[1:]) / 2)

    def __add__(self, other: Histogram) -> Histogram:
        if other.edges != self.edges:
            raise HistogramError("cannot add histograms with different bin edges")
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return Histogram(self.edges, counts, self.samples + other.samples)

    @classmethod
    def empty(cls, edges: Sequence[float]) -> Histogram:
        """Return the histogram of no sample on ``edges``."""
        return cls(tuple(edges), (0,) * (len(edges) - 1), 0)

    @classmethod
    def of(cls, values: Iterable[float], edges: Sequence[float], samples: int = 1) -> Histogram:
        """Return the histogram of ``values`` (outside the edges: clipped to the end bins)."""
        array = np.clip(np.asarray(list(values), dtype=float), edges[0], edges[-1])
        counts, _ = np.histogram(array, bins=np.asarray(edges))
        return cls(tuple(edges), tuple(int(c) for c in counts), samples)


@dataclass(frozen=True)
class Stratum:
    """What a histogram is comparable with: the assay (panel) and the calling mode."""

    assay: str
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise HistogramError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.assay or "/" in self.assay:
            raise HistogramError("assay must be a non-empty name without '/'")

    @property
    def name(self) -> str:
        """Return ``<assay>/<mode>``, the stratum's name in reports and baselines."""
        return f"{self.assay}/{self.mode}"

    @classmethod
    def parse(cls, name: str) -> Stratum:
        """Return the stratum named ``<assay>/<mode>``.

        Raises:
            HistogramError: not of that form.
        """
        assay, _, mode = name.partition("/")
        return cls(assay, mode)


def vaf_histogram(rows: Iterable[Mapping[str, Any]], *, min_depth: int = MIN_DEPTH) -> Histogram:
    """Return the VAF histogram of one sample's variant rows (the ``variants`` table).

    Counts rows whose ``filter`` is PASS, ``depth`` >= ``min_depth`` and ``vaf`` is set.
    """
    values = [
        float(r["vaf"])
        for r in rows
        if r.get("filter") == "PASS"
        and r.get("vaf") is not None
        and (r.get("depth") or 0) >= min_depth
    ]
    return Histogram.of(values, VAF_EDGES)


def to_document(histogram: Histogram, stratum: Stratum, *, day: str) -> dict[str, Any]:
    """Return the JSON document of a sample's histogram (no identifier of the sample)."""
    return {
        "format": FORMAT_VERSION,
        "kind": "vaf",
        "stratum": stratum.name,
        "day": day,
        "min_depth": MIN_DEPTH,
        "edges": list(histogram.edges),
        "counts": list(histogram.counts),
        "samples": histogram.samples,
    }


def from_document(document: Mapping[str, Any]) -> tuple[Stratum, Histogram]:
    """Return (stratum, histogram) of a document written by :func:`to_document`.

    Raises:
        HistogramError: a field is missing or of the wrong type, or another format version.
    """
    try:
        if document["format"] != FORMAT_VERSION:
            raise HistogramError(f"format {document['format']!r} (expected {FORMAT_VERSION})")
        stratum = Stratum.parse(str(document["stratum"]))
        histogram = Histogram(
            tuple(float(e) for e in document["edges"]),
            tuple(int(c) for c in document["counts"]),
            int(document.get("samples", 1)),
        )
    except (KeyError, TypeError) as e:
        raise HistogramError(f"histogram document lacks or mistypes {e}") from e
    return stratum, histogram


def encode(document: Mapping[str, Any]) -> bytes:
    """Return a histogram document as UTF-8 JSON."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def sample_output(
    rows: Iterable[Mapping[str, Any]],
    *,
    patient_key: str,
    sample: str,
    reference_prefix: str,
    paired: bool,
    day: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """Return (curated key, document) of a called sample's VAF histogram.

    The assay is the reference's name (the last part of ``reference_prefix``, e.g.
    ``panel-v1``); ``day`` (default: today, UTC) is the drift window it counts in.
    """
    from datetime import UTC, datetime

    from oncopipe.layout import vaf_histogram_key

    day = day or datetime.now(UTC).strftime("%Y-%m-%d")
    stratum = Stratum(reference_prefix.rstrip("/").rsplit("/", 1)[-1],
                      "paired" if paired else "tumour_only")  # fmt: skip
    document = to_document(vaf_histogram(rows), stratum, day=day)
    return vaf_histogram_key(day, patient_key, sample), document
