"""Concept extraction from scrubbed note text with medspaCy.

The pipeline is a blank spaCy English model (no model download is possible) with a small
sentence component of ours, medspaCy's target matcher loaded with :func:`oncopipe.notes.rules.
concept_rule_specs`, ConText (medspaCy's default rules plus
:func:`oncopipe.notes.rules.context_rule_dicts`) and the sectionizer with our own section rules.
The sentence component ends sentences at line breaks, at ``.``/``?``/``!`` before a capital or a
digit, and at `` - `` and ``->``: clinical notes are lists more than prose, and a ConText cue
("denies", "no") must not run on into the next list item. A ``;`` ends every cue but a
relative's. (medspaCy's PyRuSH splitter ran before it until 2026-12: the concept rows of 150
generated notes are identical without it, the notes tests pass, and it took 80 % of the
pipeline's time.) medspaCy's regex matchers are switched to a subclass that builds
the doc's text once per doc instead of once per rule (:func:`_one_text_regex_matcher`).

Assertion attributes of a row:

* ``negated``: ConText negation, or the mention itself ("KRAS wild-type", "EGFR neg").
* ``certainty``: ``uncertain`` when ConText finds a possibility cue (r/o, concerning for, ?).
* ``temporality``: ``hypothetical`` (if, consider, should she...) over ``historical`` (h/o,
  s/p, prior, past medical history section) over ``current``.
* ``experiencer``: ``family`` for a relative cue or the family history section. Relative cues
  only modify histology, smoking, biomarkers and metastases: a therapy "discussed with son"
  is still the patient's.

Note-level clean-up (documented because it changes rows): a gene-level positive
(``EGFR mutation`` from "EGFR-mutant") is dropped when the same note names a specific
alteration of that gene for the same experiencer; smoking status and pack-years written apart
("former smoker ... 40 PY") are joined when the note has exactly one of each for an
experiencer; "not a smoker" becomes ``never``.

Long notes are cut into pieces of at most :data:`MAX_CHUNK_CHARS` characters at line ends
(:func:`chunks`): the target matcher and ConText cost more than linear time in the length
of one doc (measured on generated notes: 25 KB took 1.8 s in one doc, 50 KB 7.3 s), so bounded
pieces keep a note's time linear in its length. Nothing crosses a line end anyway (sentences end
there, see above); the section a piece starts in is carried over by writing its heading before the
piece, so section defaults still apply, and the note-level clean-up runs on the whole note.

The pipeline is built once per process (:func:`get_nlp`); building takes one to two seconds.
PyRuSH (still installed with medspaCy) logs every sentence through loguru at DEBUG, which would
write note text to stderr, so building the pipeline disables loguru for ``PyRuSH`` in case
anything loads it.
"""

from __future__ import annotations

import logging
import warnings
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from oncopipe.notes import rules

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

log = logging.getLogger(__name__)

#: Section-based defaults applied by the sectionizer to the concepts inside a section.
SECTION_DEFAULTS: dict[str, dict[str, bool]] = {
    "family_history": {"is_family": True},
    "past_medical_history": {"is_historical": True},
}
_SENTENCE_COMPONENT = "oncopipe_sentence_bounds"
_CLAUSE_END = "CLAUSE_END"
_POSSIBLE_NOT_NEGATED = frozenset({"to exclude", "evaluate for", "test for", "checked for"})
_BATCH_SIZE = 32
#: Longest piece of a note given to the pipeline at once (characters); see the module docstring.
MAX_CHUNK_CHARS = 4000
# medspaCy's matchers hold regex rules only, so spaCy warns that their token matcher is empty
_NO_PATTERNS_WARNING = r".*\[W036\]"


@dataclass(frozen=True)
class Concept:
    """One concept mention; ``start``/``end`` index the scrubbed text the row came from."""

    concept: str
    value: str | None
    numeric_value: float | None
    negated: bool
    certainty: str
    temporality: str
    experiencer: str
    section: str | None
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        """Return the row as a plain dict (Parquet-ready, no text)."""
        return asdict(self)


def _sentence_bounds(doc: Doc) -> Doc:
    # one pass over token objects and their texts: indexing doc[i - 1] and doc[i] made two new
    # Token objects per position and read each text twice (a tenth of the pipeline's time)
    tokens = list(doc)
    if tokens:
        tokens[0].is_sent_start = True
    for prev, tok in pairwise(tokens):
        if tok.is_space:
            continue
        prev_text, prev_ws, text = prev.text, prev.whitespace_, tok.text
        starts = (
            (prev.is_space and "\n" in prev_text)
            or "\n" in prev_ws
            or (prev_text in (".", "?", "!") and (text[0].isupper() or text[0].isdigit()))
            # " - " and "->" separate clauses in notes ("MRI brain - no mets", "PD -> osi")
            or (text in ("-", "--", "->", "-->") and bool(prev_ws))
        )
        tok.is_sent_start = bool(starts)
    return doc


def _one_text_regex_matcher() -> type:
    """Return a medspaCy ``RegexMatcher`` subclass that reads ``doc.text_with_ws`` once per doc.

    medspaCy's matcher rebuilds the doc's text (a join over every token) for each of its
    hundreds of regex rules, which made the regex rules most of the pipeline's time; the
    matches, their order and the ``on_match`` calls are the same.
    """
    from medspacy.common.regex_matcher import RegexMatcher

    class OneTextRegexMatcher(RegexMatcher):  # type: ignore[misc]
        def __call__(self, doc: Doc) -> list[tuple[int, int, int]]:
            text = doc.text_with_ws
            starts: list[int] = []  # token start offsets, read once, when a match needs them
            matches: list[tuple[int, int, int]] = []
            for match_id, patterns in self._patterns.items():
                on_match = self._callbacks[match_id]
                for pattern in patterns:
                    for found in pattern.finditer(text):
                        span = doc.char_span(found.start(), found.end())
                        if span is None:
                            starts = starts or [token.idx for token in doc]
                            start = _token_for_char(starts, found.start(), self.resolve_start)
                            end = _token_for_char(starts, found.end(), self.resolve_end)
                            span = doc[start : len(doc) if end is None else end]
                        if len(span):
                            matches.append((match_id, span.start, span.end))
                        if on_match is not None:
                            on_match(self, doc, len(matches) - 1, matches)
            return matches

    return OneTextRegexMatcher


def _token_for_char(starts: Sequence[int], char: int, resolve: str) -> int | None:
    """Index of the token a regex match boundary snaps to, as medspaCy's ``get_token_for_char``.

    ``starts`` holds each token's start offset. A boundary on a token start is that token; one
    inside a token snaps to it (``left``) or to the next (``right``); past the last start it is the
    last token (``left``) or the doc's end (``right``: None). medspaCy walks the tokens (and
    rebuilds the doc's text) for every misaligned match, which cost the target matcher half its
    time; a binary search over the offsets gives the same token.

    Raises:
        ValueError: ``resolve`` is neither ``left`` nor ``right``.
    """
    if resolve not in ("left", "right"):
        raise ValueError("resolve must be either 'left' or 'right'")
    i = bisect_left(starts, char)
    if i == len(starts):
        return len(starts) - 1 if resolve == "left" else None
    if starts[i] == char or resolve == "right":
        return i
    return i - 1


def _use_one_text_regex_matcher(component: Any) -> None:
    """Switch the regex matcher inside a medspaCy component to :func:`_one_text_regex_matcher`.

    Raises:
        RuntimeError: the pinned medspaCy no longer keeps its regex matcher where expected.
    """
    from medspacy.common.medspacy_matcher import MedspacyMatcher
    from medspacy.common.regex_matcher import RegexMatcher

    found = [
        regex
        for inner in vars(component).values()
        if isinstance(inner, MedspacyMatcher)
        for regex in vars(inner).values()
        if isinstance(regex, RegexMatcher)
    ]
    if len(found) != 1:
        raise RuntimeError(f"no single medspaCy regex matcher in {type(component).__name__}")
    found[0].__class__ = _one_text_regex_matcher()


def _default_context_rules(path: str) -> list[Any]:
    """Return medspaCy's default ConText rules with three edits.

    * relative cues ("mother", "son"...) only modify :data:`rules.FAMILY_TYPES`;
    * "to exclude", "evaluate for", "test for", "checked for" mark a possibility, not a
      negation ("biopsy to exclude metastasis"), like the defaults' own "r/o" and "rule out";
    * "present" no longer ends every cue's scope (the default "presentation" terminator is
      meant for "presents with"; as an adjective it cut "son present, asked about EGFR").
    """
    from medspacy.context import ConTextRule

    out = []
    for rule in ConTextRule.from_json(path):
        if rule.category == "FAMILY":
            rule.allowed_types = set(rules.FAMILY_TYPES)
        if rule.literal in _POSSIBLE_NOT_NEGATED:
            rule.category = "POSSIBLE_EXISTENCE"
        if rule.literal == "presentation":
            rule = ConTextRule(
                literal=rule.literal,
                category=rule.category,
                pattern=[{"LOWER": {"IN": ["presenting", "presents"]}}],
                direction=rule.direction,
            )
        out.append(rule)
    return out


@lru_cache(maxsize=1)
def get_nlp() -> Language:
    """Return the medspaCy pipeline, built on the first call.

    Raises:
        ImportError: medspaCy or spaCy is not installed.
    """
    from loguru import logger as loguru_logger

    loguru_logger.disable("PyRuSH")  # it logs every token at DEBUG: note text on stderr

    import medspacy
    from medspacy.context import ConTextRule
    from medspacy.section_detection import SectionRule
    from medspacy.target_matcher import TargetRule
    from spacy.language import Language

    if _SENTENCE_COMPONENT not in Language.factories:
        Language.component(_SENTENCE_COMPONENT, func=_sentence_bounds)
    nlp = medspacy.load(medspacy_enable=["medspacy_target_matcher"])
    nlp.add_pipe(_SENTENCE_COMPONENT, before="medspacy_target_matcher")
    matcher = nlp.get_pipe("medspacy_target_matcher")
    matcher.add(
        [
            TargetRule(
                literal=f"{spec.concept}:{spec.kind}:{i}",
                category=spec.concept.upper(),
                pattern=spec.pattern,
                metadata={"concept": spec.concept, "kind": spec.kind, "value": spec.value},
            )
            for i, spec in enumerate(rules.concept_rule_specs())
        ]
    )
    context = nlp.add_pipe("medspacy_context", config={"rules": None})
    defaults = _default_context_rules(context.DEFAULT_RULES_FILEPATH)
    added = [ConTextRule(**kwargs) for kwargs in rules.context_rule_dicts()]
    for rule in [*defaults, *added]:
        if rule.category != "FAMILY":
            # a ";" ends negation, uncertainty and time cues but not a relative's: "brother
            # with lung cancer; both heavy smokers", "negative for lung cancer; mother w/ SCC"
            rule.terminated_by = {*rule.terminated_by, _CLAUSE_END}
    context.add(defaults)
    context.add(added)
    # max_scope=1: medspaCy only limits a cue by another whose scope overlaps at an edge, and
    # a whole-sentence scope would contain (not overlap) the cue's scope
    context.add(
        ConTextRule(
            literal=";",
            category=_CLAUSE_END,
            direction="PSEUDO",
            pattern=[{"ORTH": ";"}],
            max_scope=1,
        )
    )
    sectionizer = nlp.add_pipe(
        "medspacy_sectionizer", config={"rules": None, "span_attrs": SECTION_DEFAULTS}
    )
    sectionizer.add(
        [
            SectionRule(literal=name, category=name, pattern=pattern)
            for name, pattern in rules.section_patterns().items()
        ]
    )
    for name in ("medspacy_target_matcher", "medspacy_context", "medspacy_sectionizer"):
        _use_one_text_regex_matcher(nlp.get_pipe(name))
    log.info("built the notes NLP pipeline: %s", ", ".join(nlp.pipe_names))
    return nlp


def chunks(text: str, limit: int | None = None) -> list[tuple[int, str]]:
    """Return ``(offset, piece)`` pairs that cut ``text`` into pieces of at most ``limit`` chars.

    ``limit`` defaults to :data:`MAX_CHUNK_CHARS`. The pieces join back into ``text``. A piece
    ends after the last line break that fits, else after the last sentence end (". "), else at
    the last space; a run of ``limit`` characters with no space at all is cut where it falls.

    Raises:
        ValueError: ``limit`` below 2.
    """
    limit = MAX_CHUNK_CHARS if limit is None else limit
    if limit < 2:
        raise ValueError(f"limit must be at least 2, got {limit}")
    out, start = [], 0
    while len(text) - start > limit:
        window = text[start : start + limit]
        cut = window.rfind("\n") + 1
        if cut <= 0:
            cut = window.rfind(". ") + 2
        if cut <= 1:
            cut = window.rfind(" ") + 1
        if cut <= 0:
            cut = limit
        out.append((start, window[:cut]))
        start += cut
    if start < len(text) or not out:
        out.append((start, text[start:]))
    return out


def _last_heading(doc: Doc) -> str:
    """Return the heading text of the last section of ``doc`` ('' when there is none)."""
    sections = [s for s in doc._.sections if s.category is not None]
    if not sections:
        return ""
    last = sections[-1]
    return str(doc[last.title_start : last.title_end].text)


def _docs(nlp: Language, text: str) -> list[tuple[Doc, int]]:
    """Run the pipeline on the pieces of ``text``; return each doc and its shift.

    The shift is the note offset of the piece minus the length of the heading carried in front
    of it, so ``shift + doc offset`` indexes the note for every character after the heading.
    """
    out: list[tuple[Doc, int]] = []
    heading = ""
    for offset, piece in chunks(text):
        prefix = f"{heading}\n" if heading else ""
        doc = nlp(prefix + piece)
        out.append((doc, offset - len(prefix)))
        heading = _last_heading(doc) or heading
    return out


def _concepts(doc: Doc, shift: int = 0) -> list[Concept]:
    """Return the concepts of one doc, offsets moved by ``shift`` (before the note-level step).

    Mentions inside a carried heading (before offset ``-shift`` in the doc) are dropped.
    """
    out: list[Concept] = []
    for ent in doc.ents:
        if ent.start_char + shift < 0:
            continue
        meta = ent._.target_rule.metadata
        concept, kind = meta["concept"], meta["kind"]
        if ent._.is_hypothetical:
            temporality = "hypothetical"
        elif ent._.is_historical:
            temporality = "historical"
        else:
            temporality = "current"
        section = ent._.section_category
        # the family history section runs to the next header; only facts recorded for
        # relatives take its default ("ECOG 2" after the family lines is the patient's)
        family = bool(ent._.is_family) and ent.label_ in rules.FAMILY_TYPES
        for m in rules.normalise(concept, kind, ent.text, meta["value"]):
            negated = bool(ent._.is_negated) if m.negated is None else m.negated
            value = m.value
            if concept == "smoking" and kind == "bare" and negated:
                value, negated = "never", False  # "not a smoker"
            out.append(
                Concept(
                    concept=concept,
                    value=value,
                    numeric_value=m.numeric_value,
                    negated=negated,
                    certainty="uncertain" if ent._.is_uncertain else "certain",
                    temporality=temporality,
                    experiencer="family" if family else "patient",
                    section=section,
                    start=ent.start_char + m.start + shift,
                    end=ent.start_char + m.end + shift,
                )
            )
    return out


def _note_level(concepts: list[Concept]) -> list[Concept]:
    specific = {
        (c.experiencer, c.value.split()[0])
        for c in concepts
        if c.concept == "biomarker" and c.value and not c.negated and c.value != "PD-L1"
        if not c.value.endswith(" mutation")
    }
    kept = [
        c
        for c in concepts
        if not (
            c.concept == "biomarker"
            and c.value
            and c.value.endswith(" mutation")
            and not c.negated
            and (c.experiencer, c.value.split()[0]) in specific
        )
    ]
    statuses: dict[str, set[str]] = defaultdict(set)
    pack_years: dict[str, set[float]] = defaultdict(set)
    for c in kept:
        if c.concept == "smoking" and not c.negated:
            if c.value:
                statuses[c.experiencer].add(c.value)
            if c.numeric_value is not None:
                pack_years[c.experiencer].add(c.numeric_value)
    joined = []
    for c in kept:
        if c.concept == "smoking" and not c.negated:
            status, years = statuses[c.experiencer], pack_years[c.experiencer]
            if c.value is None and len(status) == 1:
                c = replace(c, value=next(iter(status)))
            if c.numeric_value is None and len(years) == 1 and c.value != "never":
                c = replace(c, numeric_value=next(iter(years)))
        joined.append(c)
    return joined


def extract(text: str) -> list[Concept]:
    """Return the concept mentions of one scrubbed note, in text order."""
    nlp = get_nlp()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_PATTERNS_WARNING)
        found = [c for doc, shift in _docs(nlp, text) for c in _concepts(doc, shift)]
    return _note_level(found)


def extract_many(texts: Iterable[str]) -> list[list[Concept]]:
    """Return the concept mentions of each scrubbed note (``nlp.pipe`` on short notes).

    A note longer than :data:`MAX_CHUNK_CHARS` goes through :func:`extract` (its pieces depend
    on each other's headings); the others are batched.
    """
    nlp = get_nlp()
    items = list(texts)
    short = [i for i, t in enumerate(items) if len(t) <= MAX_CHUNK_CHARS]
    out: list[list[Concept]] = [[] for _ in items]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_PATTERNS_WARNING)
        docs = nlp.pipe((items[i] for i in short), batch_size=_BATCH_SIZE)
        for i, doc in zip(short, docs, strict=True):
            out[i] = _note_level(_concepts(doc))
    for i, text in enumerate(items):
        if len(text) > MAX_CHUNK_CHARS:
            out[i] = extract(text)
    return out


def concept_dicts(concepts: Sequence[Concept]) -> list[dict[str, Any]]:
    """Return the rows as plain dicts."""
    return [c.as_dict() for c in concepts]
