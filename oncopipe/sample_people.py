"""The invented people of the sample cohort: their names look like PHI, so scrubbing is tested.

The cohort writer (:mod:`oncopipe.sample_data`) names its patients from these; the note
generator (:mod:`oncopipe.notes.sample`) draws from them and from more of its own. All are in
the scrubber's name lexicon (:mod:`oncopipe.notes.rules`).
"""

from __future__ import annotations

FIRST_NAMES = ("Maria", "John", "Aiko", "Lars", "Fatima", "Pedro", "Grace", "Omar")
LAST_NAMES = (
    "Keller",
    "Okafor",
    "Tanaka",
    "Lindqvist",
    "Haddad",
    "Silva",
    "Moreau",
    "Ivanova",
)
