"""Model monitoring: VAF and feature histograms, drift distances, windows, the retrain gate.

Pure logic only (no ``aws_cdk``): :mod:`.histogram` (fixed bins, per-sample histograms),
:mod:`.distances` (PSI, Jensen-Shannon, Wasserstein-1), :mod:`.window` (merging a window,
the M-of-N rule), :mod:`.job` (the daily drift job) and :mod:`.gate` (the retrain gate).
"""
