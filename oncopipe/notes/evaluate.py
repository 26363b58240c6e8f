"""Precision, recall and F1 of extracted concepts against gold annotations.

Matching is per note and per distinct fact: the key is ``(concept, value, negated,
experiencer, numeric_value)`` (numeric rounded to one decimal; it is None except for ECOG,
PD-L1 and pack-years), and repeats of a fact in one note count once. Positions are not
compared: gold from the generator has none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from oncopipe.notes.rules import NAME_PARTICLES

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


# --- name recall on planted names ---------------------------------------------------------------

#: Places in a note where a name is written; ``{name}`` is the whole name as written, ``{upper}``
#: the same in capitals, ``{first}`` its first part and ``{last}`` the rest (or the whole name
#: when it has one part).
NAME_TEMPLATES: tuple[str, ...] = (
    "Patient: {name}\nECOG 1, on osimertinib.\n",
    "PATIENT NAME: {upper}\nStage IV adenocarcinoma.\n",
    "THORACIC ONCOLOGY NOTE - {upper}\nKRAS G12C on NGS.\n",
    "Seen today with Dr. {last} for follow-up of EGFR-mutant NSCLC.\n",
    "{name} is a 67-year-old with stage IIIA squamous cell carcinoma of the lung.\n",
    "Discussed the plan with {name} and her daughter; she agrees with carboplatin.\n",
    "{last}'s CT chest shows stable disease in the right upper lobe.\n",
    "Mr. {last} tolerated cycle 2 of pembrolizumab well.\n",
    "Spoke with {first} on the phone today about the MRI brain results.\n",
    "Electronically signed by: {name}, MD\n",
    "Thank you for this referral.\n\nSincerely,\n{name}\nThoracic Oncology\n",
    "Husband {name} present at the visit. PD-L1 TPS 80%.\n",
    "cc: {name}, Pulmonology\n",
    "Case reviewed with {first} {last} at tumor board; consider SBRT.\n",
)


def planted_name_notes(names: Sequence[str]) -> list[tuple[str, str]]:
    """Return ``(note text, name)`` for every name in every :data:`NAME_TEMPLATES` position."""
    out = []
    for name in names:
        parts = name.split()
        first, last = parts[0], " ".join(parts[1:]) or parts[0]
        for template in NAME_TEMPLATES:
            text = template.format(name=name, upper=name.upper(), first=first, last=last)
            out.append((text, name))
    return out


def leaked_name_parts(name: str, scrubbed: str) -> list[str]:
    """Return the parts of ``name`` (not particles, two letters or more) left in ``scrubbed``.

    A part is matched as a whole word, in any case, and hyphenated parts are checked one by one
    ("Al-Sayed" leaks when "Sayed" survives).
    """
    import re

    leaked = []
    for part in re.findall(r"[^\W\d_]+", name):
        if len(part) < 2 or part.lower() in NAME_PARTICLES:
            continue
        if re.search(rf"(?<!\w){re.escape(part)}(?!\w)", scrubbed, re.IGNORECASE):
            leaked.append(part)
    return leaked


def read_name_list(path: str | Path) -> list[str]:
    """Return the names of a held-out list: one a line, ``#`` comments and blank lines skipped.

    Raises:
        OSError: the file cannot be read.
    """
    text = Path(path).read_text(encoding="utf-8")
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]
