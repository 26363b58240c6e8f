"""The multimodal cohort: one row per labelled patient, joined from the curated tables.

:mod:`.dataset` joins variants, radiomic features and note concepts into the training
table with patient-level splits and train-only normalisation; :mod:`.synthetic` generates
a cohort with a documented ground truth that needs all three modalities.
"""
