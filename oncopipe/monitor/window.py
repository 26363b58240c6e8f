"""Windows: the sum of the per-sample histograms of a day, and the M-of-N alarm rule.

A window with fewer than the minimum samples is *not evaluated*: it neither raises nor
clears the alarm (the CloudWatch alarm treats its missing metric as not breaching).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from oncopipe.monitor.histogram import Histogram, HistogramError, Stratum


def merge(histograms: Iterable[Histogram], edges: Sequence[float]) -> Histogram:
    """Return the sum of ``histograms`` (all on ``edges``; empty input: the empty histogram).

    Raises:
        HistogramError: a histogram on other edges.
    """
    total = Histogram.empty(edges)
    for histogram in histograms:
        total = total + histogram
    return total


def merge_by_stratum(
    items: Iterable[tuple[Stratum, Histogram]], edges: Sequence[float]
) -> dict[Stratum, Histogram]:
    """Return the window's histogram per stratum.

    Raises:
        HistogramError: a histogram on other edges.
    """
    windows: dict[Stratum, Histogram] = {}
    for stratum, histogram in items:
        windows[stratum] = windows.get(stratum, Histogram.empty(edges)) + histogram
    return windows


@dataclass(frozen=True)
class AlarmRule:
    """Alarm when ``m`` of the last ``n`` evaluated windows exceed ``threshold``."""

    threshold: float
    m: int
    n: int
    min_samples: int

    def __post_init__(self) -> None:
        if not 1 <= self.m <= self.n:
            raise HistogramError(f"M-of-N needs 1 <= M <= N (got {self.m} of {self.n})")

    def counts(self, window: Histogram) -> bool:
        """Return whether ``window`` has enough samples (and calls) to be evaluated."""
        return window.samples >= self.min_samples and window.total > 0

    def breaching(self, distance: float | None) -> bool:
        """Return whether one window's distance (None: not evaluated) breaches."""
        return distance is not None and distance > self.threshold

    def alarm(self, history: Sequence[float | None]) -> bool:
        """Return the alarm state after ``history`` (oldest first, None = not evaluated).

        Like CloudWatch with TreatMissingData=notBreaching, a window not evaluated counts
        as not breaching within the last ``n``.
        """
        recent = list(history)[-self.n :]
        return sum(self.breaching(d) for d in recent) >= self.m
