"""Drift distances, histograms and windows on small known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oncopipe.monitor.distances import PSI_FLOOR, distances, js_distance, psi, wasserstein1
from oncopipe.monitor.histogram import (
    MIN_DEPTH,
    VAF_EDGES,
    Histogram,
    HistogramError,
    Stratum,
    from_document,
    sample_output,
    to_document,
    vaf_histogram,
)
from oncopipe.monitor.window import AlarmRule, merge, merge_by_stratum

HALVES = (0.0, 0.5, 1.0)


def test_vaf_edges_are_finer_below_a_tenth() -> None:
    widths = np.diff(VAF_EDGES)
    assert VAF_EDGES[0] == 0.0 and VAF_EDGES[-1] == 1.0
    assert np.allclose(widths[np.asarray(VAF_EDGES[:-1]) < 0.1], 0.01)
    assert np.allclose(widths[np.asarray(VAF_EDGES[:-1]) >= 0.1], 0.05)


def test_identical_histograms_have_zero_distance() -> None:
    h = Histogram.of([0.05, 0.3, 0.3, 0.45, 0.9], VAF_EDGES)
    d = distances(h, h)
    assert d.psi == pytest.approx(0.0, abs=1e-12)
    assert d.js == pytest.approx(0.0, abs=1e-7)
    assert d.wasserstein == pytest.approx(0.0, abs=1e-12)


def test_distances_of_two_bin_histograms_match_hand_computation() -> None:
    base, window = Histogram(HALVES, (50, 50)), Histogram(HALVES, (25, 75))
    p, q = (0.5, 0.5), (0.25, 0.75)
    expected_psi = sum((b - a) * math.log(b / a) for a, b in zip(p, q, strict=True))
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]
    kl = lambda x: sum(xi * math.log2(xi / mi) for xi, mi in zip(x, m, strict=True))  # noqa: E731
    assert psi(base, window) == pytest.approx(expected_psi, rel=1e-3)  # floor: tiny effect
    assert js_distance(base, window) == pytest.approx(math.sqrt((kl(p) + kl(q)) / 2))
    # a quarter of the mass moves from the centre 0.25 to 0.75
    assert wasserstein1(base, window) == pytest.approx(0.125)


def test_wasserstein_reads_a_shift_in_vaf_units() -> None:
    base = Histogram.of([0.22] * 100, VAF_EDGES)
    moved = Histogram.of([0.32] * 100, VAF_EDGES)
    assert wasserstein1(base, moved) == pytest.approx(0.1)
    assert js_distance(base, moved) == pytest.approx(1.0)  # disjoint supports


def scipy_distances(a: Histogram, b: Histogram) -> tuple[float, float]:
    """SciPy's JS distance (base 2) and Wasserstein-1 on the bin centres, as the job had them."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    p, q = np.asarray(a.counts, dtype=float), np.asarray(b.counts, dtype=float)
    centres = a.centres
    return (float(jensenshannon(p / p.sum(), q / q.sum(), base=2)),
            float(wasserstein_distance(centres, centres, p, q)))  # fmt: skip


def random_pairs() -> list[tuple[Histogram, Histogram]]:
    rng = np.random.default_rng(23)
    pairs = []
    for _ in range(200):
        edges = VAF_EDGES if rng.random() < 0.5 else tuple(np.cumsum(rng.uniform(0.1, 5, 13)))
        k = len(edges) - 1
        # some bins empty, totals from 1 to 10,000 and different on each side
        a = rng.integers(0, 50, k) * (rng.random(k) < 0.7)
        b = rng.integers(0, 5000, k) * (rng.random(k) < 0.4)
        a[rng.integers(k)] += 1
        b[rng.integers(k)] += 1
        if rng.random() < 0.5:  # a window drawn from the baseline's shape: small distances
            b = rng.multinomial(int(rng.integers(1, 10_000)), a / a.sum())
        pairs.append((Histogram(edges, tuple(int(x) for x in a)),
                      Histogram(edges, tuple(int(x) for x in b))))  # fmt: skip
    return pairs


def edge_case_pairs() -> list[tuple[Histogram, Histogram]]:
    one_bin = Histogram(VAF_EDGES, tuple(int(i == 3) * 40 for i in range(len(VAF_EDGES) - 1)))
    last_bin = Histogram(VAF_EDGES, tuple(int(i == 27) for i in range(len(VAF_EDGES) - 1)))
    spread = Histogram.of([0.01 * i for i in range(100)], VAF_EDGES)
    return [
        (one_bin, one_bin),  # all mass in one bin, equal
        (one_bin, last_bin),  # all mass in one bin each, disjoint, totals 40 and 1
        (one_bin, spread),
        (spread, Histogram(VAF_EDGES, tuple(7 * c for c in spread.counts))),  # x7: same shape
        (Histogram(HALVES, (1, 0)), Histogram(HALVES, (0, 1))),
        (Histogram((0.0, 1.0), (3,)), Histogram((0.0, 1.0), (5,))),  # a single bin
    ]


def assert_scipys(a: Histogram, b: Histogram) -> None:
    js, w1 = scipy_distances(a, b)
    assert js_distance(a, b) == pytest.approx(js, rel=1e-9, abs=1e-7)
    assert wasserstein1(a, b) == pytest.approx(w1, rel=1e-9, abs=1e-12)
    assert js_distance(a, b) == pytest.approx(js_distance(b, a), abs=1e-12)  # symmetric


def test_js_and_wasserstein_are_scipys_on_random_histograms() -> None:
    for a, b in random_pairs():
        assert_scipys(a, b)


@pytest.mark.parametrize("pair", edge_case_pairs(),
                         ids=["one-bin-equal", "one-bin-disjoint", "one-bin-vs-spread",
                              "same-shape-x7", "two-bins-swapped", "single-bin"])  # fmt: skip
def test_js_and_wasserstein_are_scipys_on_edge_cases(pair: tuple[Histogram, Histogram]) -> None:
    assert_scipys(*pair)


def test_js_of_equal_proportions_is_zero_not_nan() -> None:
    # equal shapes, different totals: rounding must not give sqrt of a tiny negative
    for counts in ((1, 2, 3), (7, 0, 11), (1, 1, 1)):
        a = Histogram((0.0, 1.0, 2.0, 3.0), counts)
        b = Histogram((0.0, 1.0, 2.0, 3.0), tuple(c * 3 for c in counts))
        assert js_distance(a, b) == pytest.approx(0.0, abs=1e-7)
        assert not math.isnan(js_distance(a, b))


def test_psi_floor_keeps_an_empty_bin_finite() -> None:
    base = Histogram(HALVES, (100, 0))
    window = Histogram(HALVES, (50, 50))
    value = psi(base, window)
    assert math.isfinite(value)
    # the empty bin counts as PSI_FLOOR (then renormalised)
    b = (1 / (1 + PSI_FLOOR), PSI_FLOOR / (1 + PSI_FLOOR))
    expected = sum((0.5 - x) * math.log(0.5 / x) for x in b)
    assert value == pytest.approx(expected)


def test_distances_refuse_other_bins_and_empty_histograms() -> None:
    with pytest.raises(HistogramError, match="different bin edges"):
        psi(Histogram(HALVES, (1, 1)), Histogram((0.0, 0.3, 1.0), (1, 1)))
    with pytest.raises(HistogramError, match="empty"):
        wasserstein1(Histogram(HALVES, (1, 1)), Histogram(HALVES, (0, 0)))


def test_vaf_histogram_counts_pass_calls_above_the_depth_floor() -> None:
    rows = [
        {"filter": "PASS", "depth": 100, "vaf": 0.055},
        {"filter": "PASS", "depth": 100, "vaf": 1.0},  # closed last bin
        {"filter": "LowQual", "depth": 100, "vaf": 0.3},
        {"filter": "PASS", "depth": MIN_DEPTH - 1, "vaf": 0.3},
        {"filter": "PASS", "depth": 100, "vaf": None},
    ]
    h = vaf_histogram(rows)
    assert h.total == 2 and h.samples == 1
    assert h.counts[VAF_EDGES.index(0.05)] == 1
    assert h.counts[-1] == 1


def test_sample_document_round_trips_without_identifiers() -> None:
    key, doc = sample_output(
        [{"filter": "PASS", "depth": 50, "vaf": 0.4}],
        patient_key="pk-1",
        sample="S1",
        reference_prefix="reference/panel-v1/",
        paired=False,
        day="2026-12-01",
    )
    assert key == "genomics/vaf-histograms/day=2026-12-01/pk-1/S1.json"
    assert "pk-1" not in str(doc) and "S1" not in str(doc)
    stratum, h = from_document(doc)
    assert stratum == Stratum("panel-v1", "tumour_only") and h.total == 1
    with pytest.raises(HistogramError, match="format"):
        from_document({**to_document(h, stratum, day="2026-12-01"), "format": 99})


def test_a_window_is_the_sum_of_its_samples_by_stratum() -> None:
    a, b = Stratum("panel-v1", "paired"), Stratum("panel-v1", "tumour_only")
    h1, h2 = Histogram.of([0.3], VAF_EDGES), Histogram.of([0.3, 0.05], VAF_EDGES)
    merged = merge_by_stratum([(a, h1), (a, h2), (b, h1)], VAF_EDGES)
    assert merged[a].samples == 2 and merged[a].total == 3
    assert merged[b].samples == 1
    assert merge([], VAF_EDGES).samples == 0


def test_m_of_n_counts_only_recent_windows_and_treats_missing_as_not_breaching() -> None:
    rule = AlarmRule(threshold=0.03, m=2, n=3, min_samples=10)
    assert rule.alarm([0.05, None, 0.04])
    assert not rule.alarm([0.05, None, None])
    assert not rule.alarm([0.05, 0.05, 0.0, 0.0, 0.04])  # the old ones fell out of N
    assert not rule.counts(Histogram.of([0.3] * 50, VAF_EDGES, samples=9))
    with pytest.raises(HistogramError):
        AlarmRule(threshold=0.1, m=3, n=2, min_samples=1)
