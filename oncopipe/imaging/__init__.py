"""Imaging stage cores: DICOM de-identification (PS3.15 Annex E)."""
