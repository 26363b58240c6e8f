"""Simulated tumour samples' VAF calls: the drift benchmark's model, and per-sample rows.

Each tumour sample has a Poisson(:data:`CALLS_PER_SAMPLE`) number of PASS calls; their VAFs
are a mixture of clonal calls (Beta(6, 9), mean 0.4) and a low-VAF tail (:data:`TAIL`,
Beta(2, 40), mean 0.05). A shift of size ``d`` (a new sequencing platform, say) moves every
clonal call's VAF by +d; the shift ``"tail"`` doubles the low-VAF tail and leaves the rest
alone. Values are clipped to [0, 1].

:func:`simulate` is what ``benchmarks/drift_detection.py`` measures the alarm on (merged
windows); :func:`sample_rows` gives one sample's variant rows, the input of the variants
stage's histogram writer (:func:`oncopipe.monitor.histogram.sample_output`), for the local
lifecycle demo. Nothing here is patient data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from oncopipe.monitor.histogram import MIN_DEPTH, VAF_EDGES, Histogram

CALLS_PER_SAMPLE = 12
TAIL = 0.15
#: The read depth of every simulated call: well above the histogram's MIN_DEPTH.
DEPTH = 5 * MIN_DEPTH

Shift = float | str


def vafs(rng: np.random.Generator, calls: int, shift: Shift) -> np.ndarray:
    """Return ``calls`` simulated VAFs (see the module doc for ``shift``)."""
    tail = 2 * TAIL if shift == "tail" else TAIL
    low = rng.random(calls) < tail
    vaf = np.where(low, rng.beta(2, 40, calls), rng.beta(6, 9, calls))
    if isinstance(shift, float | int) and not isinstance(shift, bool):
        vaf = np.where(low, vaf, vaf + float(shift))
    return np.asarray(np.clip(vaf, 0.0, 1.0))


def simulate(rng: np.random.Generator, samples: int, shift: Shift) -> Histogram:
    """Return the merged VAF histogram of ``samples`` simulated tumour samples."""
    calls = int(rng.poisson(CALLS_PER_SAMPLE, samples).sum())
    return Histogram.of(vafs(rng, calls, shift), VAF_EDGES, samples)


def sample_rows(rng: np.random.Generator, shift: Shift) -> list[dict[str, Any]]:
    """Return one simulated sample's variant rows (``filter``, ``depth``, ``vaf``)."""
    calls = int(rng.poisson(CALLS_PER_SAMPLE))
    return [{"filter": "PASS", "depth": DEPTH, "vaf": float(v)}
            for v in vafs(rng, calls, shift)]  # fmt: skip
