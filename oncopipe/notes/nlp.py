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

Speed (``benchmarks/profiles.md``, the notes section), each step with the same rows, sentences,
entities and ConText modifiers as before on every note measured: the text a doc was made from
is kept with it (:class:`_TextKeeper`); a regex rule runs only where the note holds a string it
needs and only where one of its matches can start (:func:`_finditer`); ConText's ``IN`` sets
are lexeme flags read in C (:func:`_use_lexeme_flags`); the entities are set once per doc
(:func:`_one_set_target_matcher`) and the sentence starts with one array (the per-token setters
each scanned the doc).

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
import re
import warnings
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache, lru_cache
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


_TEXT_KEY = "oncopipe_text"
#: ``SENT_START`` of a token that does not start a sentence, as ``Doc.to_array`` writes it.
_NOT_START = 2**64 - 1


def _doc_text(doc: Doc) -> str:
    """Return the text of ``doc``: the string it was made from, kept by :class:`_TextKeeper`.

    ``doc.text`` joins every token's text (a Token object each); the pipeline read it once per
    matcher, three times a doc. A doc made elsewhere still gets ``doc.text``.
    """
    text = doc.user_data.get(_TEXT_KEY)
    return text if isinstance(text, str) else str(doc.text)


class _TextKeeper:
    """The pipeline's tokenizer, which also keeps the text in ``doc.user_data`` (:func:`_doc_text`).

    spaCy's tokenizer is lossless (``doc.text`` is the input); a doc whose token offsets do not
    end at the text's length is left without it, so :func:`_doc_text` falls back to ``doc.text``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> Doc:
        doc = self.tokenizer(text)
        if len(doc) and doc[-1].idx + len(doc[-1].text_with_ws) == len(text):
            doc.user_data[_TEXT_KEY] = text
        return doc

    def __getattr__(self, name: str) -> Any:
        if name == "tokenizer":  # not set yet (a copy or an unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


def _sentence_bounds(doc: Doc) -> Doc:
    # One pass over token attribute arrays and slices of the text, written back with one
    # from_array: setting Token.is_sent_start checks the whole doc for a parse on every call
    # (quadratic in the doc's tokens), and each Token object cost more than its test.
    import numpy
    from spacy.attrs import IDX, IS_SPACE, LENGTH, SENT_START, SPACY

    n = len(doc)
    if not n:
        return doc
    text = _doc_text(doc)
    rows = doc.to_array([IDX, LENGTH, SPACY, IS_SPACE, SENT_START]).tolist()
    values = [row[4] for row in rows]  # a space token keeps what it had
    values[0] = 1
    prev_text, prev_ws, prev_space = "", 0, 0
    for i, (idx, length, ws, space, _) in enumerate(rows):
        tok_text = text[idx : idx + length]
        if i and not space:
            # a token's trailing whitespace is one space or nothing (whitespace_ is " " or ""),
            # so a line break before a token is always a space token of its own
            starts = (
                (prev_space and "\n" in prev_text)
                or (
                    prev_text in (".", "?", "!")
                    and (tok_text[0].isupper() or tok_text[0].isdigit())
                )
                # " - " and "->" separate clauses in notes ("MRI brain - no mets", "PD -> osi")
                or (tok_text in ("-", "--", "->", "-->") and bool(prev_ws))
            )
            values[i] = 1 if starts else _NOT_START
        prev_text, prev_ws, prev_space = tok_text, ws, space
    column: Any = numpy.array(values, dtype=numpy.uint64)
    doc.from_array([SENT_START], column)
    return doc


def _required_literals(items: Any) -> frozenset[str] | None:
    """Return strings one of which every match of a parsed regex contains, in lower case.

    ``items`` is a sequence of ``re._parser`` (op, argument) pairs. None when no such set is
    known. Only ASCII literals count, lowered: a literal matches (ignoring case or not) only
    where the text lowered by :data:`_FOLD` holds it. Runs of literals, groups, alternations
    (the union of every branch's set, when each has one) and repeats of at least one are read;
    anything else (classes, assertions, optional parts) requires nothing. Of the sets a
    sequence gives, the one with the longest shortest string is kept.
    """
    from re import _constants as sre  # type: ignore[attr-defined]

    candidates: list[frozenset[str]] = []
    run: list[str] = []
    for op, av in [*items, (None, None)]:
        if op is sre.LITERAL and av < 128:
            run.append(chr(av).lower())
            continue
        if run:
            candidates.append(frozenset({"".join(run)}))
            run = []
        found: frozenset[str] | None = None
        if op is sre.SUBPATTERN:
            found = _required_literals(av[-1])
        elif op is sre.ATOMIC_GROUP:
            found = _required_literals(av)
        elif op is sre.BRANCH:
            branches = [_required_literals(b) for b in av[1]]
            if all(branches):
                found = frozenset().union(*branches)  # type: ignore[arg-type]
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT) and av[0] >= 1:
            found = _required_literals(av[2])
        if found:
            candidates.append(found)
    return max(candidates, key=lambda c: (min(map(len, c)), -len(c)), default=None)


#: Lowers a text for :func:`_finditer`, one character for one: ASCII capitals, and the four
#: other characters that match an ASCII letter when ``re`` ignores case (dotted and dotless I,
#: long S, the Kelvin sign; found by matching every code point against every ASCII letter with
#: CPython 3.11's ``re``). Every other character can match no ASCII literal, case or not.
_FOLD = str.maketrans(
    {
        **{c: c.lower() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
        "\u0130": "i",
        "\u0131": "i",
        "\u017f": "s",
        "\u212a": "k",
    }
)
#: Most prefixes :func:`_prefix_literals` keeps for one regex, and most steps it takes.
_MAX_PREFIXES = 64
_MAX_PREFIX_STEPS = 4000


def _prefix_literals(items: Any, steps: list[int]) -> frozenset[str] | None:
    """Return strings one of which every match of a parsed regex starts with, in lower case.

    As :func:`_required_literals` (ASCII literals, lowered), but for the start of a match:
    leading assertions take no text; a group, or a branch of an alternation, gives the strings
    its own matches start with (read with what follows it when it may match nothing); an
    optional part gives those and the ones of what follows; a short literal run is joined to
    what follows it ("n" + "on"/"sclc"). None when unknown, when more than
    :data:`_MAX_PREFIXES` strings would be needed, or after :data:`_MAX_PREFIX_STEPS` steps
    (``steps`` counts them).
    """
    from re import _constants as sre  # type: ignore[attr-defined]

    steps[0] += 1
    if steps[0] > _MAX_PREFIX_STEPS:
        return None
    i = 0
    while i < len(items) and items[i][0] in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
        i += 1
    if i == len(items):
        return None  # a match may be empty here
    op, av = items[i]
    rest = list(items[i + 1 :])

    def alone_or_with_rest(part: Any) -> frozenset[str] | None:
        return _prefix_literals(part, steps) or (
            _prefix_literals([*part, *rest], steps) if rest else None
        )

    if op is sre.LITERAL and av < 128:
        run = []
        for op2, av2 in items[i:]:
            if op2 is not sre.LITERAL or av2 >= 128:
                break
            run.append(chr(av2).lower())
        head, after = "".join(run), list(items[i + len(run) :])
        tails = _prefix_literals(after, steps) if len(head) < 4 and after else None
        if tails and len(tails) <= _MAX_PREFIXES:
            return frozenset(head + t for t in tails)
        return frozenset({head})
    if op is sre.SUBPATTERN:
        return alone_or_with_rest(av[-1])
    if op is sre.ATOMIC_GROUP:
        return alone_or_with_rest(av)
    if op is sre.BRANCH:
        ways = [alone_or_with_rest(branch) for branch in av[1]]
    elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, high, body = av
        if high == 0:
            return _prefix_literals(rest, steps)
        ways = [_prefix_literals(body, steps)]
        if low == 0:
            ways.append(_prefix_literals(rest, steps) if rest else None)
    else:
        return None
    if not all(ways):
        return None
    found: frozenset[str] = frozenset().union(*ways)  # type: ignore[arg-type]
    return found if len(found) <= _MAX_PREFIXES else None


@cache
def _pattern_literals(
    pattern: str, flags: int
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """Return (:func:`_required_literals`, :func:`_prefix_literals`) of one compiled regex."""
    try:
        parsed = re._parser.parse(pattern, flags)  # type: ignore[attr-defined]
    except (re.error, AttributeError):
        return None, None
    return _required_literals(parsed.data), _prefix_literals(parsed.data, [0])


def _finditer(pattern: re.Pattern[str], text: str, lowered: str | None) -> Iterable[re.Match[str]]:
    """Return ``pattern.finditer(text)``'s matches, trying only where a match can start.

    ``lowered`` is the text lowered by :data:`_FOLD` (None: plain ``finditer``). A regex that
    needs a string (:func:`_required_literals`) the lowered text does not hold has no match. A
    regex whose matches all start with one of a few strings (:func:`_prefix_literals`) is tried
    with ``pattern.match`` at each place the lowered text holds one of them, left to right, from
    the end of the last match: the leftmost match from a position is the first place from which
    the regex matches, so these are ``finditer``'s matches (``match(text, i)`` sees the text
    before ``i``, as look-behinds and ``\\b`` need). A regex without such strings, or with
    them in many places, is scanned by ``finditer``.
    """
    needs, prefixes = _pattern_literals(pattern.pattern, pattern.flags)
    if lowered is None:
        return pattern.finditer(text)
    if needs is not None and not any(s in lowered for s in needs):
        return ()  # no match possible
    if prefixes is None:
        return pattern.finditer(text)
    starts: set[int] = set()
    for prefix in prefixes:
        i = lowered.find(prefix)
        while i >= 0:
            starts.add(i)
            i = lowered.find(prefix, i + 1)
    if len(starts) > len(text) // 16:
        return pattern.finditer(text)
    found, pos = [], 0
    for i in sorted(starts):
        if i < pos:
            continue
        m = pattern.match(text, i)
        if m is not None:
            if m.end() == i:  # cannot happen (a match starts with a prefix); be safe
                return pattern.finditer(text)
            found.append(m)
            pos = m.end()
    return found


@lru_cache(maxsize=1)
def _one_text_regex_matcher() -> type:
    """Return a medspaCy ``RegexMatcher`` subclass that reads the doc's text once per doc.

    medspaCy's matcher rebuilds the doc's text (a join over every token) for each of its
    hundreds of regex rules, which made the regex rules most of the pipeline's time. It also
    skips a rule whose regex needs a string (:func:`_required_literals`) that the lowered text
    does not hold, and tries the others only where a match can start
    (:func:`_finditer`): a scan costs the same with or without a match (``re`` has no fast
    path for a pattern that ignores case and starts with ``\\b``), and most rules match a note
    nowhere or in one or two places. The matches, their order and the ``on_match`` calls are
    the same.
    """
    from medspacy.common.regex_matcher import RegexMatcher

    class OneTextRegexMatcher(RegexMatcher):  # type: ignore[misc]
        def __call__(self, doc: Doc) -> list[tuple[int, int, int]]:
            text = _doc_text(doc)
            lowered = text.lower() if text.isascii() else text.translate(_FOLD)
            starts: list[int] = []  # token start offsets, read once, when a match needs them
            matches: list[tuple[int, int, int]] = []
            for match_id, patterns in self._patterns.items():
                on_match = self._callbacks[match_id]
                for pattern in patterns:
                    for found in _finditer(pattern, text, lowered):
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
    for patterns in found[0]._patterns.values():
        for pattern in patterns:
            _pattern_literals(pattern.pattern, pattern.flags)  # read once, while building


#: Lexeme flag bits spaCy leaves to applications (``FLAG19``..``FLAG63``).
_FREE_FLAGS = range(19, 64)


def _set_flag_getter(attr: str, values: frozenset[str]) -> Any:
    if attr == "LOWER":
        # a lexeme's LOWER is str.lower() of its text (spacy.lang.lex_attrs.lower)
        return lambda orth: orth.lower() in values
    return lambda orth: orth in values


def _use_lexeme_flags(nlp: Language, component: Any) -> None:
    """Rewrite ``{"LOWER": {"IN": [...]}}`` token patterns of a component as lexeme flags.

    spaCy's matcher checks an ``IN`` set through a Python predicate per token (and per set), and
    ConText's 68 rules with a token pattern hold 65 different sets: the predicates were most of
    ConText's time. A flag (``FLAG19``...), set on each lexeme from its text once, is read in C,
    and accepts exactly the tokens the set does. There are 45 free flags, so the sets a pattern
    starts with (tried at every token) get them first; the rest stay predicates. The matcher is
    rebuilt with the same keys, patterns in the same order and the same callbacks, so the
    matches and their order are unchanged.

    Raises:
        RuntimeError: the pinned medspaCy no longer keeps one spaCy matcher where expected.
    """
    from medspacy.common.medspacy_matcher import MedspacyMatcher
    from spacy.matcher import Matcher

    found = [
        (inner, name)
        for inner in vars(component).values()
        if isinstance(inner, MedspacyMatcher)
        for name, matcher in vars(inner).items()
        if isinstance(matcher, Matcher)
    ]
    if len(found) != 1:
        raise RuntimeError(f"no single spaCy matcher in {type(component).__name__}")
    inner, name = found[0]
    old: Any = getattr(inner, name)
    entries = [(key, *old.get(key)) for key in old._patterns]  # insertion order = pattern order

    def is_set(spec_value: Any) -> bool:
        return (
            isinstance(spec_value, dict)
            and list(spec_value) == ["IN"]
            and all(isinstance(v, str) for v in spec_value["IN"])
        )

    wanted: dict[tuple[str, frozenset[str]], bool] = {}  # set -> tried at every token
    for _, _, patterns in entries:
        for pattern in patterns:
            every = True
            for spec in pattern:
                for attr, value in spec.items():
                    if attr in ("LOWER", "ORTH") and is_set(value):
                        key = (attr, frozenset(value["IN"]))
                        wanted[key] = wanted.get(key, False) or every
                every = every and spec.get("OP") in ("?", "*")
    vocab: Any = nlp.vocab
    free = [f for f in _FREE_FLAGS if f not in vocab.lex_attr_getters]
    flags: dict[tuple[str, frozenset[str]], str] = {}
    for (attr, values), _ in sorted(wanted.items(), key=lambda kv: not kv[1]):
        if not free:
            break
        flag = free.pop(0)
        vocab.add_flag(_set_flag_getter(attr, values), flag_id=flag)
        flags[(attr, values)] = f"FLAG{flag}"

    def rewrite(spec: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for attr, value in spec.items():
            flag = flags.get((attr, frozenset(value["IN"]))) if is_set(value) else None
            if flag is None:
                out[attr] = value
            else:
                out[flag] = True
        return out

    new = Matcher(nlp.vocab, validate=False)
    for key, on_match, patterns in entries:
        rewritten = [[rewrite(spec) for spec in pattern] for pattern in patterns]
        new.add(key, rewritten, on_match=on_match, greedy=old._filter.get(key))
    setattr(inner, name, new)


@lru_cache(maxsize=1)
def _one_set_target_matcher() -> type:
    """Return a medspaCy ``TargetMatcher`` subclass that sets ``doc.ents`` once per doc.

    medspaCy adds each match with ``doc.ents += (span,)``, which reads and writes every token's
    entity annotation per match (quadratic in a doc). When the doc has no entities yet and the
    matches are not empty and do not overlap (the matcher prunes overlaps), setting them at once
    gives the same annotation; otherwise medspaCy's own call runs.
    """
    from medspacy.target_matcher import TargetMatcher
    from spacy.tokens import Span

    class OneSetTargetMatcher(TargetMatcher):  # type: ignore[misc]
        def __call__(self, doc: Doc) -> Doc | list[Span]:
            if not self.result_type or self.result_type.lower() != "ents" or doc.ents:
                return super().__call__(doc)
            matcher = self._TargetMatcher__matcher
            spans = []
            for rule_id, start, end in matcher(doc):
                rule = matcher.rule_map[self.nlp.vocab.strings[rule_id]]
                span = Span(doc, start=start, end=end, label=rule.category)
                span._.target_rule = rule
                if rule.attributes is not None:
                    for attribute, value in rule.attributes.items():
                        setattr(span._, attribute, value)
                spans.append(span)
            ordered = sorted(spans, key=lambda s: (s.start, s.end))
            if all(s.start < s.end for s in spans) and all(
                a.end <= b.start for a, b in pairwise(ordered)
            ):
                doc.ents = tuple(spans)
                return doc
            # a conflict: medspaCy's own loop decides (it matches again; never seen here)
            return super().__call__(doc)

    return OneSetTargetMatcher


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
    _use_lexeme_flags(nlp, context)
    matcher.__class__ = _one_set_target_matcher()
    nlp.tokenizer = _TextKeeper(nlp.tokenizer)
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


def _iter_docs(nlp: Language, text: str) -> Iterator[tuple[Doc, int]]:
    """Run the pipeline on the pieces of ``text``; yield each doc and its shift, one at a time.

    The shift is the note offset of the piece minus the length of the heading carried in front
    of it, so ``shift + doc offset`` indexes the note for every character after the heading.
    One doc at a time: a long note's pieces are not all kept alive (each holds a Python object
    per token), which made the collector's passes grow with the note.
    """
    heading = ""
    for offset, piece in chunks(text):
        prefix = f"{heading}\n" if heading else ""
        doc = nlp(prefix + piece)
        heading = _last_heading(doc) or heading
        yield doc, offset - len(prefix)


def _docs(nlp: Language, text: str) -> list[tuple[Doc, int]]:
    """Return :func:`_iter_docs` as a list."""
    return list(_iter_docs(nlp, text))


def _concepts(doc: Doc, shift: int = 0) -> list[Concept]:
    """Return the concepts of one doc, offsets moved by ``shift`` (before the note-level step).

    Mentions inside a carried heading (before offset ``-shift`` in the doc) are dropped.
    """
    out: list[Concept] = []
    for ent in doc.ents:
        start_char = ent.start_char
        if start_char + shift < 0:
            continue
        ext = ent._  # one accessor per entity: each ``ent._`` is a new object
        meta = ext.target_rule.metadata
        concept, kind = meta["concept"], meta["kind"]
        if ext.is_hypothetical:
            temporality = "hypothetical"
        elif ext.is_historical:
            temporality = "historical"
        else:
            temporality = "current"
        section = ext.section_category
        # the family history section runs to the next header; only facts recorded for
        # relatives take its default ("ECOG 2" after the family lines is the patient's)
        family = bool(ext.is_family) and ent.label_ in rules.FAMILY_TYPES
        context_negated = bool(ext.is_negated)
        certainty = "uncertain" if ext.is_uncertain else "certain"
        for m in rules.normalise(concept, kind, ent.text, meta["value"]):
            negated = context_negated if m.negated is None else m.negated
            value = m.value
            if concept == "smoking" and kind == "bare" and negated:
                value, negated = "never", False  # "not a smoker"
            out.append(
                Concept(
                    concept=concept,
                    value=value,
                    numeric_value=m.numeric_value,
                    negated=negated,
                    certainty=certainty,
                    temporality=temporality,
                    experiencer="family" if family else "patient",
                    section=section,
                    start=start_char + m.start + shift,
                    end=start_char + m.end + shift,
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
        found = [c for doc, shift in _iter_docs(nlp, text) for c in _concepts(doc, shift)]
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
