"""Cohort rows -> padded tensors for the multimodal model.

:func:`encode_rows` turns cohort rows (``dataset.parquet`` or
:meth:`oncopipe.cohort.dataset.Preprocessing.encode_patient`) into numpy arrays once;
:meth:`Encoded.batch` slices a batch and trims padding to the longest patient in it, so
training reads memory, not Parquet, and one patient at serving time costs no padding.

Radiomic values are regrouped by image type x feature class (``original_glcm``,
``wavelet-LLH_firstorder``, ...; 85 groups of at most 24 features for the v1 parameter
file): each group becomes one token.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from oncopipe.cohort.dataset import UNK
from oncopipe.cohort.preprocess import NOTE_FLAG_BITS, Preprocessing, image_class

MODALITIES = ("genomics", "radiomics", "notes")
N_FLAGS = len(NOTE_FLAG_BITS)


@dataclass(frozen=True)
class RadiomicLayout:
    """Where each feature of ``radiomic_values`` goes: ``index[group, slot]`` (-1 = empty)."""

    groups: list[str]
    index: Any  # (groups, group_size) int64
    features: list[str]

    @classmethod
    def from_features(cls, features: Sequence[str]) -> RadiomicLayout:
        """Group feature names by image type x class, in order of first appearance."""
        members: dict[str, list[int]] = {}
        for i, name in enumerate(features):
            members.setdefault(image_class(name), []).append(i)
        size = max((len(m) for m in members.values()), default=1)
        index = np.full((len(members), size), -1, dtype=np.int64)
        for g, m in enumerate(members.values()):
            index[g, : len(m)] = m
        return cls(list(members), index, list(features))

    @property
    def group_size(self) -> int:
        return int(self.index.shape[1])

    def grouped(self, values: Any) -> Any:
        """Return (patients, groups, group_size) float32 from (patients, features) values."""
        values = np.asarray(values, dtype=np.float32)
        padded = np.concatenate([values, np.zeros((values.shape[0], 1), np.float32)], axis=1)
        return padded[:, self.index]  # -1 picks the zero column


@dataclass(frozen=True)
class Vocabulary:
    """String -> id maps of one :class:`Preprocessing` (0 = padding, 1 = unknown)."""

    genes: dict[str, int]
    alterations: dict[str, int]
    note_tokens: dict[str, int]

    @classmethod
    def from_preprocessing(cls, prep: Preprocessing) -> Vocabulary:
        def ids(tokens: Sequence[str]) -> dict[str, int]:
            return {t: i for i, t in enumerate(tokens)}

        return cls(ids(prep.genes), ids(prep.alterations), ids(prep.note_tokens))

    @staticmethod
    def lookup(table: Mapping[str, int], token: str) -> int:
        return table.get(token, table[UNK])


@dataclass
class Encoded:
    """A set of patients as padded arrays (see :func:`encode_rows`)."""

    keys: list[str]
    labels: Any  # (N,) float32, NaN when unlabelled
    present: Any  # (N, 3) bool: genomics, radiomics, notes
    gene: Any  # (N, V) int64
    alteration: Any  # (N, V) int64
    vaf: Any  # (N, V) float32
    n_variants: Any  # (N,) int64
    radiomics: Any  # (N, groups, group_size) float32
    note_token: Any  # (N, M) int64
    note_flags: Any  # (N, M, N_FLAGS) float32
    note_numeric: Any  # (N, M) float32
    n_notes: Any  # (N,) int64

    def __len__(self) -> int:
        return len(self.keys)

    def batch(self, idx: Any, present: Any | None = None) -> dict[str, Any]:
        """Return the tensors of patients ``idx`` (numpy ints), trimmed to their lengths.

        ``present`` overrides the presence flags (modality dropout, masked ablations).
        """
        import torch

        idx = np.asarray(idx, dtype=np.int64)
        v = max(1, int(self.n_variants[idx].max(initial=0)))
        m = max(1, int(self.n_notes[idx].max(initial=0)))
        flags = self.present[idx] if present is None else np.asarray(present, dtype=bool)
        return {
            "present": torch.from_numpy(np.ascontiguousarray(flags)),
            "gene": torch.from_numpy(self.gene[idx, :v]),
            "alteration": torch.from_numpy(self.alteration[idx, :v]),
            "vaf": torch.from_numpy(self.vaf[idx, :v]),
            "radiomics": torch.from_numpy(self.radiomics[idx]),
            "note_token": torch.from_numpy(self.note_token[idx, :m]),
            "note_flags": torch.from_numpy(self.note_flags[idx, :m]),
            "note_numeric": torch.from_numpy(self.note_numeric[idx, :m]),
        }


def _rows(table_or_rows: Any) -> list[dict[str, Any]]:
    if hasattr(table_or_rows, "to_pylist"):
        return list(table_or_rows.to_pylist())
    return list(table_or_rows)


def encode_rows(
    rows: Any,
    prep: Preprocessing,
    *,
    max_variants: int = 32,
    max_notes: int = 48,
    layout: RadiomicLayout | None = None,
) -> Encoded:
    """Encode cohort rows (a pyarrow table or a list of row dicts) as padded arrays.

    Variants beyond ``max_variants`` (the lowest VAFs: rows are sorted by VAF) and note
    mentions beyond ``max_notes`` are dropped.
    """
    data = _rows(rows)
    vocab = Vocabulary.from_preprocessing(prep)
    layout = layout or RadiomicLayout.from_features(prep.radiomic_features)
    n = len(data)
    n_feat = len(prep.radiomic_features)
    gene = np.zeros((n, max_variants), np.int64)
    alt = np.zeros((n, max_variants), np.int64)
    vaf = np.zeros((n, max_variants), np.float32)
    n_var = np.zeros(n, np.int64)
    rad = np.zeros((n, n_feat), np.float32)
    tok = np.zeros((n, max_notes), np.int64)
    flags = np.zeros((n, max_notes, N_FLAGS), np.float32)
    num = np.zeros((n, max_notes), np.float32)
    n_note = np.zeros(n, np.int64)
    present = np.zeros((n, 3), bool)
    labels = np.full(n, np.nan, np.float32)
    bits = np.array(list(NOTE_FLAG_BITS.values()), np.int64)
    for i, row in enumerate(data):
        present[i] = (
            bool(row.get("has_genomics")),
            bool(row.get("has_radiomics")),
            bool(row.get("has_notes")),
        )
        if row.get("response") is not None:
            labels[i] = float(row["response"])
        genes = (row.get("variant_genes") or [])[:max_variants]
        k = len(genes)
        n_var[i] = k
        gene[i, :k] = [vocab.lookup(vocab.genes, g) for g in genes]
        alt[i, :k] = [
            vocab.lookup(vocab.alterations, a) for a in (row.get("variant_alterations") or [])[:k]
        ]
        vaf[i, :k] = (row.get("variant_vafs") or [])[:k]
        values = row.get("radiomic_values") or []
        if len(values) == n_feat:
            rad[i] = values
        elif values:
            raise ValueError(
                f"{row.get('patient_key')}: {len(values)} radiomic values, the preprocessing "
                f"has {n_feat} features"
            )
        tokens = (row.get("note_tokens") or [])[:max_notes]
        k = len(tokens)
        n_note[i] = k
        tok[i, :k] = [vocab.lookup(vocab.note_tokens, t) for t in tokens]
        f = np.asarray((row.get("note_flags") or [])[:k], np.int64)
        flags[i, :k] = ((f[:, None] & bits[None, :]) > 0).astype(np.float32)
        num[i, :k] = (row.get("note_numeric") or [])[:k]
    return Encoded(
        keys=[str(r.get("patient_key") or "") for r in data],
        labels=labels,
        present=present,
        gene=gene,
        alteration=alt,
        vaf=vaf,
        n_variants=n_var,
        radiomics=layout.grouped(rad),
        note_token=tok,
        note_flags=flags,
        note_numeric=num,
        n_notes=n_note,
    )


def select_modalities(present: Any, modalities: Sequence[str]) -> Any:
    """Return presence flags with every modality not in ``modalities`` switched off."""
    keep = np.array([m in modalities for m in MODALITIES], dtype=bool)
    return np.asarray(present, dtype=bool) & keep[None, :]


def modality_dropout(present: Any, p: float, rng: np.random.Generator) -> Any:
    """Drop each present modality with probability ``p``, never every present one.

    A patient who would lose all modalities keeps one of them, chosen at random.
    """
    present = np.asarray(present, dtype=bool)
    if p <= 0:
        return present.copy()
    drop = rng.random(present.shape) < p
    out = present & ~drop
    emptied = present.any(axis=1) & ~out.any(axis=1)
    for i in np.flatnonzero(emptied):
        options = np.flatnonzero(present[i])
        out[i, options[int(rng.integers(len(options)))]] = True
    return out
