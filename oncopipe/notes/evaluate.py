"""Precision, recall and F1 of extracted concepts against gold annotations.

Matching is per note and per distinct fact: the key is ``(concept, value, negated,
experiencer, numeric_value)`` (numeric rounded to one decimal; it is None except for ECOG,
PD-L1 and pack-years), and repeats of a fact in one note count once. Positions are not
compared: gold from the generator has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Key = tuple[str, str | None, bool, str, float | None]


def _get(item: Any, name: str) -> Any:
    return item[name] if isinstance(item, Mapping) else getattr(item, name)


def fact_key(item: Any) -> Key:
    """Return the matching key of a concept, gold concept or row dict."""
    numeric = _get(item, "numeric_value")
    return (
        _get(item, "concept"),
        _get(item, "value"),
        bool(_get(item, "negated")),
        _get(item, "experiencer"),
        None if numeric is None else round(float(numeric), 1),
    )


def evaluate(pred: Sequence[Iterable[Any]], gold: Sequence[Iterable[Any]]) -> dict[str, Any]:
    """Score predicted concepts against gold, note by note.

    ``pred[i]`` and ``gold[i]`` are the concepts of note ``i`` (objects or mappings with
    concept, value, negated, experiencer, numeric_value).

    Returns:
        ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``; ``attribute_errors``: gold
        facts missed although a prediction has the same concept, value and number (so negation
        or experiencer was wrong); ``errors``: per note, the missed and spurious keys.

    Raises:
        ValueError: the two sequences have different lengths.
    """
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predicted notes but {len(gold)} gold notes")
    tp = fp = fn = attribute_errors = 0
    errors: list[dict[str, list[Key]]] = []
    for p_items, g_items in zip(pred, gold, strict=True):
        p = {fact_key(x) for x in p_items}
        g = {fact_key(x) for x in g_items}
        tp += len(p & g)
        fp += len(p - g)
        fn += len(g - p)
        loose = {(k[0], k[1], k[4]) for k in p}
        attribute_errors += sum(1 for k in g - p if (k[0], k[1], k[4]) in loose)
        errors.append({"missed": sorted(g - p, key=str), "spurious": sorted(p - g, key=str)})
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "attribute_errors": attribute_errors,
        "errors": errors,
    }
