"""The Basic Application Level Confidentiality Profile as data (DICOM PS3.15 Table E.1-1).

``annex_e.csv`` beside this module holds the table: one row per attribute (or tag
pattern) with its Basic Profile action and the action of each option column. A new
edition of the standard is a data change. Source: PS3.15 Table E.1-1 as extracted by the
innolitics/dicom-standard project (``standard/confidentiality_profile_attributes.json``).

Action codes (PS3.15 E.1.1): D dummy value, Z zero length (or dummy), X remove, K keep,
C clean, U replace UID consistently; combined codes (``X/Z``, ``X/D``, ``Z/D``,
``X/Z/D``, ``X/Z/U*``) let an implementation keep an attribute its IOD requires. Without
IOD tables at hand this implementation resolves them to the action that keeps the
attribute present with no identifying content: ``X/Z``, ``Z/D``, ``X/Z/D`` -> Z,
``X/D`` -> D, ``X/Z/U*`` -> keep the sequence and replace the UIDs inside it.

What the table does not list: ``binary_safelist.csv`` beside this module names the
elements of binary value representations (OB, OD, OF, OL, OV, OW, UN) that survive when
the table does not list them, each with why the IOD needs it (pixel data, LUTs, waveform
and spectroscopy samples). Every other unlisted binary element is removed (see
:meth:`oncopipe.imaging.deid.Deidentifier`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE_FILE = Path(__file__).resolve().parent / "annex_e.csv"
BINARY_SAFELIST_FILE = Path(__file__).resolve().parent / "binary_safelist.csv"
#: Value representations whose content cannot be inspected as text: an unlisted element
#: with one of them survives only on the binary safelist.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
EDITION = "PS3.15 Table E.1-1 (innolitics/dicom-standard extraction)"

OPTION_COLUMNS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)
_RESOLVED = {
    "D": "D", "Z": "Z", "X": "X", "K": "K", "C": "C", "U": "U",
    "X/Z": "Z", "Z/D": "Z", "X/Z/D": "Z", "X/D": "D", "X/Z/U*": "KU",
}  # fmt: skip


@dataclass(frozen=True)
class Rule:
    """One row of the table."""

    tag: str  # 8 hex digits, or a pattern such as 60XX3000
    name: str
    basic: str
    options: dict[str, str]

    def action(self, enabled: frozenset[str]) -> str:
        """Return the resolved action (D Z X K C U KU) under the enabled options.

        An enabled option with a value in this row wins over the Basic Profile action;
        where two enabled options apply, the one that removes less information wins
        (K over C), as PS3.15 E.1.1 requires.
        """
        chosen = [self.options[o] for o in OPTION_COLUMNS if o in enabled and self.options.get(o)]
        if "K" in chosen:
            return "K"
        if "C" in chosen:
            return "C"
        try:
            return _RESOLVED[self.basic]
        except KeyError as e:
            raise ValueError(
                f"{TABLE_FILE.name}: unknown action {self.basic!r} for {self.tag}"
            ) from e


#: Attributes this deployment removes that the table extraction lacks (documented here,
#: not mixed into the standard's data): the assigning authority of the patient ID.
LOCAL_ADDITIONS = (
    Rule(tag="00100024", name="Issuer of Patient ID Qualifiers Sequence", basic="X", options={}),
)


@lru_cache(maxsize=1)
def load_rules() -> tuple[dict[int, Rule], tuple[Rule, ...]]:
    """Return (rules by tag number, pattern rules such as overlays and curves)."""
    exact: dict[int, Rule] = {}
    patterns: list[Rule] = []
    with TABLE_FILE.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            rule = Rule(
                tag=row["tag"],
                name=row["name"],
                basic=row["basic"].strip(),
                options={c: row[c].strip() for c in OPTION_COLUMNS if row.get(c, "").strip()},
            )
            try:
                exact[int(rule.tag, 16)] = rule
            except ValueError:
                patterns.append(rule)
    for rule in LOCAL_ADDITIONS:
        exact.setdefault(int(rule.tag, 16), rule)
    return exact, tuple(patterns)


@lru_cache(maxsize=1)
def load_binary_safelist() -> frozenset[int]:
    """Return the tags of the unlisted binary elements that are kept (``binary_safelist.csv``).

    Raises:
        ValueError: a row without a tag of 8 hex digits or without a reason.
    """
    tags: set[int] = set()
    with BINARY_SAFELIST_FILE.open(encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            tag, reason = (row.get("tag") or "").strip(), (row.get("reason") or "").strip()
            if len(tag) != 8 or not reason:
                raise ValueError(
                    f"{BINARY_SAFELIST_FILE.name} line {line}: a tag (8 hex digits) and a "
                    "reason are required"
                )
            tags.add(int(tag, 16))
    return frozenset(tags)
