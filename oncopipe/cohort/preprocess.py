"""The serving contract of the cohort: how one patient's raw features become model inputs.

:class:`Preprocessing` is what the training split taught the data pipeline (vocabularies,
z-score statistics, the radiomic feature order), saved as ``preprocess.json`` beside the
dataset; :meth:`Preprocessing.encode_patient` turns one patient's raw features into a cohort
row, in training (:mod:`oncopipe.cohort.dataset`) and in serving (``training/inference.py``,
the patient-ready function) alike, so a model sees the same numbers in both. The rules are
in :mod:`oncopipe.cohort.dataset`'s docstring.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VOLUME_FEATURE = "original_shape_VoxelVolume"
CLIP = 10.0
PREPROCESS_VERSION = 1

#: Bits of ``note_flags``: context of a concept mention.
NOTE_FLAG_BITS = {
    "negated": 1,
    "uncertain": 2,
    "historical": 4,
    "hypothetical": 8,
    "family": 16,
    "has_numeric": 32,
}


def alteration(gene: str, protein_change: str | None) -> str:
    """Return the alteration token of a call: ``"KRAS G12C"`` or ``"TERT non-coding"``."""
    change = (protein_change or "").strip()
    return f"{gene} {change}" if change else f"{gene} non-coding"


def note_token(concept: str, value: str | None) -> str:
    """Return the token of a concept mention: ``"ecog=1"``, ``"biomarker=KRAS G12C"``."""
    value = (value or "").strip()
    return f"{concept}={value}" if value else concept


def note_flags(mention: Mapping[str, Any]) -> int:
    """Return the context bits (:data:`NOTE_FLAG_BITS`) of one concept mention."""
    bits = 0
    if mention.get("negated"):
        bits |= NOTE_FLAG_BITS["negated"]
    if mention.get("certainty") == "uncertain":
        bits |= NOTE_FLAG_BITS["uncertain"]
    if mention.get("temporality") == "historical":
        bits |= NOTE_FLAG_BITS["historical"]
    if mention.get("temporality") == "hypothetical":
        bits |= NOTE_FLAG_BITS["hypothetical"]
    if mention.get("experiencer") == "family":
        bits |= NOTE_FLAG_BITS["family"]
    if _number(mention.get("numeric_value")) is not None:
        bits |= NOTE_FLAG_BITS["has_numeric"]
    return bits


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def image_class(feature: str) -> str:
    """Return the group of a radiomic feature: ``"wavelet-LLH_glcm"`` for one of its features."""
    parts = feature.split("_")
    return "_".join(parts[:2]) if len(parts) >= 3 else feature


@dataclass
class Preprocessing:
    """What the training split taught the data pipeline; saved as ``preprocess.json``.

    Vocabularies start with ``[PAD]`` and ``[UNK]``; ``radiomic_features`` fixes the order
    of ``radiomic_values``.
    """

    radiomic_features: list[str]
    radiomic_mean: list[float]
    radiomic_std: list[float]
    numeric_stats: dict[str, tuple[float, float]]
    genes: list[str]
    alterations: list[str]
    note_tokens: list[str]
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    min_count: dict[str, int] = field(default_factory=dict)
    version: int = PREPROCESS_VERSION

    def to_json(self) -> str:
        """Return the JSON text of ``preprocess.json``."""
        doc = {
            "version": self.version,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "min_count": self.min_count,
            "radiomic_features": self.radiomic_features,
            "radiomic_mean": self.radiomic_mean,
            "radiomic_std": self.radiomic_std,
            "numeric_stats": {k: list(v) for k, v in sorted(self.numeric_stats.items())},
            "genes": self.genes,
            "alterations": self.alterations,
            "note_tokens": self.note_tokens,
            "note_flag_bits": NOTE_FLAG_BITS,
            "clip": CLIP,
        }
        return json.dumps(doc, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Preprocessing:
        """Parse ``preprocess.json``.

        Raises:
            ValueError: not a preprocessing file of a version this code reads.
        """
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != PREPROCESS_VERSION:
            raise ValueError(
                f"not a version-{PREPROCESS_VERSION} preprocess.json "
                f"(version {doc.get('version') if isinstance(doc, dict) else None})"
            )
        return cls(
            radiomic_features=list(doc["radiomic_features"]),
            radiomic_mean=[float(x) for x in doc["radiomic_mean"]],
            radiomic_std=[float(x) for x in doc["radiomic_std"]],
            numeric_stats={k: (float(v[0]), float(v[1])) for k, v in doc["numeric_stats"].items()},
            genes=list(doc["genes"]),
            alterations=list(doc["alterations"]),
            note_tokens=list(doc["note_tokens"]),
            seed=int(doc["seed"]),
            fractions=tuple(doc["fractions"]),  # type: ignore[arg-type]
            min_count=dict(doc.get("min_count", {})),
        )

    def save(self, path: Path | str) -> Path:
        """Write ``preprocess.json`` at ``path``; return it."""
        p = Path(path)
        p.write_text(self.to_json() + "\n", encoding="utf-8")
        return p

    @classmethod
    def load(cls, path: Path | str) -> Preprocessing:
        """Read a ``preprocess.json``.

        Raises:
            ValueError: unreadable or of another version.
        """
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    # -- encoding (shared by the dataset build and serving) -------------------------------

    def normalise_radiomics(self, matrix: Any) -> Any:
        """Return z-scored, clipped float32 values of a (patients, features) matrix; NaN -> 0."""
        mean = np.asarray(self.radiomic_mean)
        std = np.asarray(self.radiomic_std)
        z = (np.asarray(matrix, dtype=np.float64) - mean) / std
        return np.nan_to_num(np.clip(z, -CLIP, CLIP), nan=0.0).astype(np.float32)

    def radiomic_vector(self, features: Mapping[str, Any]) -> Any:
        """Return one ROI's values (feature -> value) as the normalised vector."""
        try:  # fast path: numbers and None (numpy turns None into NaN)
            raw = np.array([features.get(n) for n in self.radiomic_features], dtype=float)
        except (TypeError, ValueError):
            raw = np.array([_number(features.get(n)) for n in self.radiomic_features], dtype=float)
        return self.normalise_radiomics(raw[None, :])[0]

    def encode_variants(self, rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """Return the variant columns of one patient from raw calls (non-PASS dropped)."""
        kept = [r for r in rows if r.get("filter") == "PASS" and r.get("gene")]
        kept.sort(
            key=lambda r: (
                -(_number(r.get("vaf")) or 0.0),
                alteration(str(r["gene"]), r.get("protein_change")),
            )
        )
        return {
            "variant_genes": [str(r["gene"]) for r in kept],
            "variant_alterations": [
                alteration(str(r["gene"]), r.get("protein_change")) for r in kept
            ],
            "variant_vafs": [_number(r.get("vaf")) or 0.0 for r in kept],
        }

    def encode_notes(self, mentions: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
        """Return the note columns of one patient from raw concept mentions."""
        ordered = sorted(
            mentions, key=lambda m: (str(m.get("note_id") or ""), int(m.get("start") or 0))
        )
        numeric = []
        for m in ordered:
            x = _number(m.get("numeric_value"))
            mean, std = self.numeric_stats.get(str(m.get("concept")), (0.0, 1.0))
            numeric.append(0.0 if x is None else float(np.clip((x - mean) / std, -CLIP, CLIP)))
        return {
            "note_tokens": [note_token(str(m.get("concept")), m.get("value")) for m in ordered],
            "note_numeric": numeric,
            "note_flags": [note_flags(m) for m in ordered],
            "note_ids": [str(m.get("note_id") or "") for m in ordered],
            "note_starts": [int(m.get("start") or 0) for m in ordered],
            "note_ends": [int(m.get("end") or 0) for m in ordered],
        }

    def encode_patient(
        self,
        variants: Sequence[Mapping[str, Any]] | None,
        radiomics: Mapping[str, Any] | None,
        notes: Sequence[Mapping[str, Any]] | None,
    ) -> dict[str, Any]:
        """Return one cohort row (without key, split and labels) from raw features.

        ``None`` means the modality is missing; an empty list of variants or notes means
        present but empty (a sequenced tumour without somatic calls).
        """
        row: dict[str, Any] = {
            "has_genomics": variants is not None,
            "has_radiomics": radiomics is not None,
            "has_notes": notes is not None,
            "radiomic_series": None,
            "radiomic_roi": None,
        }
        row.update(self.encode_variants(variants or []))
        row["radiomic_values"] = (
            [float(x) for x in self.radiomic_vector(radiomics)] if radiomics is not None else []
        )
        row.update(self.encode_notes(notes or []))
        return row
