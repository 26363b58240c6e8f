"""Drift distances between two histograms on the same bins.

- :func:`psi`: population stability index, sum((p - q) * ln(p / q)), with proportions
  floored at :data:`PSI_FLOOR` so an empty bin does not make it infinite.
- :func:`js_distance`: Jensen-Shannon distance (base 2, so 0 <= d <= 1).
- :func:`wasserstein1`: the earth mover's distance on the bin centres; in VAF units, so a
  shift of every call by 0.1 reads about 0.1.

Both are SciPy's (``scipy.spatial.distance.jensenshannon``, ``scipy.stats.
wasserstein_distance``) written out in numpy for histograms on shared bins: the drift
Lambda must also carry pyarrow (the radiomics and note-concept tables) and matplotlib (the
report), and with SciPy's 93 MiB beside them its bundle exceeds Lambda's 250 MiB unzipped
limit. ``tests/unit/test_monitor_distances.py`` checks them against SciPy's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from oncopipe.monitor.histogram import Histogram, HistogramError

#: The smallest proportion a bin counts with in the PSI.
PSI_FLOOR = 1e-4
#: The distances, by the name the metrics and the configuration use.
DISTANCES = ("psi", "js", "wasserstein")


def _proportions(counts: np.ndarray, floor: float = 0.0) -> np.ndarray:
    total = counts.sum()
    if total <= 0:
        raise HistogramError("an empty histogram has no distribution")
    p = counts / total
    if floor:
        p = np.maximum(p, floor)
        p = p / p.sum()
    return np.asarray(p)


def _check(a: Histogram, b: Histogram) -> tuple[np.ndarray, np.ndarray]:
    if a.edges != b.edges:
        raise HistogramError("the histograms have different bin edges")
    return np.asarray(a.counts, dtype=float), np.asarray(b.counts, dtype=float)


def psi(baseline: Histogram, window: Histogram, *, floor: float = PSI_FLOOR) -> float:
    """Return the population stability index of ``window`` against ``baseline``.

    Raises:
        HistogramError: different edges, or an empty histogram.
    """
    a, b = _check(baseline, window)
    p, q = _proportions(a, floor), _proportions(b, floor)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(baseline: Histogram, window: Histogram) -> float:
    """Return the Jensen-Shannon distance (base 2, in [0, 1]).

    Raises:
        HistogramError: different edges, or an empty histogram.
    """
    a, b = _check(baseline, window)
    p, q = _proportions(a), _proportions(b)
    m = (p + q) / 2
    # relative entropy with 0 * log(0 / m) = 0; m > 0 wherever p or q is
    kl_pm = np.sum(p[p > 0] * np.log2(p[p > 0] / m[p > 0]))
    kl_qm = np.sum(q[q > 0] * np.log2(q[q > 0] / m[q > 0]))
    # max: rounding can leave -1e-17 for equal histograms, whose square root is NaN
    return float(np.sqrt(max((kl_pm + kl_qm) / 2, 0.0)))


def wasserstein1(baseline: Histogram, window: Histogram) -> float:
    """Return the Wasserstein-1 distance on the bin centres (in the values' units).

    Raises:
        HistogramError: different edges, or an empty histogram.
    """
    a, b = _check(baseline, window)
    # on one sorted support (the edges increase), W1 is the area between the two CDFs
    gaps = np.diff(baseline.centres)
    cdf_gap = np.cumsum(_proportions(a))[:-1] - np.cumsum(_proportions(b))[:-1]
    return float(np.sum(np.abs(cdf_gap) * gaps))


@dataclass(frozen=True)
class Distances:
    """The three distances of a window from its baseline."""

    psi: float
    js: float
    wasserstein: float

    def get(self, name: str) -> float:
        """Return the distance called ``name`` (one of :data:`DISTANCES`).

        Raises:
            KeyError: another name.
        """
        if name not in DISTANCES:
            raise KeyError(f"unknown distance {name!r} (one of {', '.join(DISTANCES)})")
        return float(getattr(self, name))

    def as_dict(self) -> dict[str, float]:
        """Return the distances by name."""
        return asdict(self)


def distances(baseline: Histogram, window: Histogram) -> Distances:
    """Return all three distances of ``window`` from ``baseline``.

    Raises:
        HistogramError: different edges, or an empty histogram.
    """
    return Distances(
        psi=psi(baseline, window),
        js=js_distance(baseline, window),
        wasserstein=wasserstein1(baseline, window),
    )
