"""PHI scrubbing of clinical note text: a safelist of words that are not names, plus rules.

Names are found the way recall-oriented de-identifiers find them (Philter's safelist design), not
from a list of names: a capitalised word that is not in a vocabulary of English and medical words
is a name. The vocabulary (:func:`safe_words`) is philter-lite's ``nonames`` set (195,253 words;
read as data from the installed package, never imported), plus
:data:`oncopipe.notes.rules.CLINICAL_WORDS` (drugs, brands, genes, sites of the extraction rules)
and the eponyms kept on purpose (:data:`oncopipe.notes.rules.EPONYMS`: Pancoast, Horner,
Hodgkin, Whipple...). The structure of the text does the rest: titles, ``Name:``/``Patient:``
fields, signature blocks, ``, MD``, headings in capitals, a vocabulary word capitalised inside
lower-case prose ("spoke with Zoran today") or as a possessive ("Shin's CT"), and the capitalised
words and particles ("van der", "de la", "Ní") next to a name.

Measured (``benchmarks/features.py``, ``tests/unit/test_notes_phi.py``): of 206 held-out names (373
parts, many languages, none in a lexicon of the project) planted in 14 positions (2884 notes),
the name-lexicon scrubber this replaced left a part of the name in 2120 notes (every name leaked
somewhere); this one leaves none. Extraction F1 is unchanged (hand-written 0.998, generated 1.000)
and on those 120 notes the only words newly scrubbed are a town ("Quincy") and one inhaler brand
outside the vocabulary ("Trelegy"): over-scrubbing a rare capitalised word is the price of recall.
Known limit: a name that is also an English word, alone at the start of a sentence ("Sun
reports fatigue"), is kept.

The libraries were tried first, offline as they would run here: philter-lite 0.6.0 (the whole
filter chain) needs NLTK's ``averaged_perceptron_tagger_eng``, which is a hub download, so it
raises ``LookupError`` on the first note; its safelist is what is adopted. presidio-analyzer
2.2.366 finds persons only through a spaCy NER model, which it downloads at run time; no official
one is on PyPI (only third-party re-uploads), and with the blank English pipeline it left a name
in 2884 of the 2884 planted notes.

Every pattern runs in time linear in the note: name words start only where no letter precedes
them and repeat possessively, the e-mail pattern starts a run of its characters, a look-behind is
bounded, and overlaps are resolved by bisection (200 KB of adversarial text scrubs in seconds).

What is replaced (counts per category are returned, never the values):

* ``name``: the patient's names when known (whole words, any case), names after a title (Dr.,
  Mr., Mrs., Ms., Miss, Prof.), after a label (``Name:``, ``Patient:``, ``PCP:``, ``Signed by``,
  ``cc:``), before ``, MD``/``DO``/``RN``..., after a closing (``Sincerely,``), capitalised words
  outside the safelist and words of the name lexicon of :mod:`oncopipe.notes.rules`, each with
  its capitalised neighbours and particles -> ``[NAME]``.
* ``date``: ISO, US (``03/14/2026``, ``3/14/26``), dotted European (``14.03.2026``), written
  (``March 14, 2026``, ``14 Mar 2026``, ``Mar 2026``), month/year (``3/2026``) and month/day
  (``3/14``): shifted by ``date_shift_days`` in the format written; ``[DATE]`` when no shift is
  given or the value is not a valid date. Years alone ("in 2019") stay: HIPAA Safe Harbor keeps
  the year. A month/year whose shift lands in the same month is written ``[DATE]``, since the
  shifted text would equal the original.
* ``id``: labelled identifiers (MRN, Patient-ID, account, accession, SSN...), SSNs, any run of
  six or more digits, letter+digit codes (``AB123456``, ``S25-18842``) -> ``[ID]``.
* ``phone`` (phone, fax, pager), ``email``, ``url``, ``address`` (street with number and
  suffix, city/state/ZIP, a named street with a full suffix word, bare ZIP after a state),
  ``age`` over 89 (``92-year-old``, ``age 93``, ``93 yo``, ``93 y/o``) -> ``[AGE>89]``.

Clinical content is protected by construction: identifiers need six digits or a letter prefix
and five digits (``L858R``, ``T2N2M0``, ``PIK3CA``, ``H1047R`` do not qualify), and lexicon words
that are clinical terms (:data:`oncopipe.notes.rules.CLINICAL_WORDS`) are never names.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from itertools import chain

import regex

from oncopipe.notes.rules import (
    CLINICAL_WORDS,
    EPONYMS,
    FIRST_NAMES,
    NAME_PARTICLES,
    SURNAMES,
)

log = logging.getLogger(__name__)

NAME = "[NAME]"
DATE = "[DATE]"
ID = "[ID]"
PHONE = "[PHONE]"
EMAIL = "[EMAIL]"
URL = "[URL]"
ADDRESS = "[ADDRESS]"
AGE = "[AGE>89]"
_SURROGATE = {
    "name": NAME,
    "date": DATE,
    "id": ID,
    "phone": PHONE,
    "email": EMAIL,
    "url": URL,
    "address": ADDRESS,
    "age": AGE,
}


@dataclass(frozen=True)
class ScrubResult:
    """Scrubbed text and how many values of each category were replaced (never the values)."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    priority: int
    category: str
    replacement: str


# --- dates ------------------------------------------------------------------------------------
_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_MONTH_ALTS = []
for _m in _MONTHS:
    _forms = {_m, _m[:3]} | ({"Sept"} if _m == "September" else set())
    _MONTH_ALTS += sorted(_forms | {f.upper() for f in _forms}, key=len, reverse=True)
_MON = "(?P<mon>" + "|".join(_MONTH_ALTS) + r")(?P<dot>\.?)"
_DAY = r"(?P<day>\d{1,2})(?P<ord>st|nd|rd|th)?"
_ORDINALS = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd", 31: "st"}


def _month_number(name: str) -> int:
    return next(i for i, m in enumerate(_MONTHS, 1) if name.lower().startswith(m[:3].lower()))


def _month_name(number: int, like: str) -> str:
    """Write month ``number`` the way ``like`` was written (full, three letters, Sept, capitals)."""
    full = _MONTHS[number - 1]
    if like.lower() == "sept":
        text = "Sept" if number == 9 else full[:3]
    elif len(like) <= 3 and like.lower() != "may":  # "May" is its own full name
        text = full[:3]
    else:
        text = full
    return text.upper() if like.isupper() and len(like) > 1 else text


def _pad(number: int, like: str) -> str:
    # a field written with two digits keeps two ("14" -> "04"), a one-digit field stays short
    return f"{number:02d}" if len(like) == 2 else str(number)


def _year_text(year: int, like: str) -> str:
    return f"{year % 100:02d}" if len(like) == 2 else str(year)


def _full_year(text: str) -> int:
    if len(text) == 4:
        return int(text)
    # a two-digit year in a clinical note is this century up to 69, the last one after
    return 2000 + int(text) if int(text) < 70 else 1900 + int(text)


def _valid(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


class _DateShifter:
    """Builds the replacement of one date match, or ``[DATE]`` when it cannot shift it."""

    def __init__(self, days: int | None) -> None:
        self.days = days

    def _move(self, value: date) -> date | None:
        if self.days is None:
            return None
        try:
            return value + timedelta(days=self.days)
        except OverflowError:
            return None

    def numeric_ymd(self, m: re.Match[str]) -> str:
        value = _valid(int(m["y"]), int(m["m"]), int(m["d"]))
        moved = self._move(value) if value else None
        if moved is None:
            return DATE
        sep = m["sep"]
        return f"{moved.year}{sep}{_pad(moved.month, m['m'])}{sep}{_pad(moved.day, m['d'])}"

    def numeric_mdy(self, m: re.Match[str], *, day_first: bool) -> str:
        first, second, year = int(m["a"]), int(m["b"]), _full_year(m["y"])
        month, day = (second, first) if day_first else (first, second)
        value = _valid(year, month, day)
        if value is None and not day_first:
            # 14/03/2026 written day first in an otherwise US note
            value, day_first = _valid(year, second, first), True
        moved = self._move(value) if value else None
        if moved is None:
            return DATE
        sep = m["sep"]
        a, b = (moved.day, moved.month) if day_first else (moved.month, moved.day)
        return f"{_pad(a, m['a'])}{sep}{_pad(b, m['b'])}{sep}{_year_text(moved.year, m['y'])}"

    def month_year_numeric(self, m: re.Match[str]) -> str:
        value = _valid(int(m["y"]), int(m["m"]), 15)
        moved = self._move(value) if value else None
        if moved is None or (moved.year, moved.month) == (int(m["y"]), int(m["m"])):
            return DATE
        return f"{_pad(moved.month, m['m'])}/{moved.year}"

    def month_day_numeric(self, m: re.Match[str]) -> str:
        value = _valid(2001, int(m["m"]), int(m["d"]))  # no year written: shift in a plain year
        moved = self._move(value) if value else None
        if moved is None:
            return DATE
        return f"{_pad(moved.month, m['m'])}/{_pad(moved.day, m['d'])}"

    def written(self, m: re.Match[str]) -> str:
        groups = m.groupdict()
        year_text = groups.get("y")
        month = _month_number(m["mon"])
        has_day = groups.get("day") is not None
        year = int(year_text) if year_text else 2001  # no year written: shift in a plain year
        value = _valid(year, month, int(m["day"]) if has_day else 15)
        moved = self._move(value) if value else None
        if moved is None or (not has_day and (moved.year, moved.month) == (year, month)):
            return DATE
        mon = _month_name(moved.month, m["mon"]) + m["dot"]
        out = m.group()
        if has_day:
            suffix = _ORDINALS.get(moved.day, "th") if m["ord"] else ""
            day = _pad(moved.day, m["day"]) + suffix
            out = out[: m.start("day") - m.start()] + day + out[m.end("day") - m.start() :]
        out = out.replace(m["mon"] + m["dot"], mon, 1)
        if year_text:
            out = out[: out.rfind(year_text)] + str(moved.year)
        return out


# --- patterns ---------------------------------------------------------------------------------
_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM "
    "NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC"
).split()
_STATE = r"(?:" + "|".join(_STATES) + r")"
_SUFFIX = (
    r"(?i:street|st|avenue|ave|road|rd|lane|ln|drive|dr|boulevard|blvd|court|ct|way|place|pl|"
    r"terrace|ter|circle|cir|parkway|pkwy|highway|hwy|square|sq|trail|trl)"
)
_SUFFIX_FULL = r"(?:Street|Avenue|Road|Lane|Drive|Boulevard|Court|Terrace|Parkway|Highway|Place)"
_CAP = r"[A-Z][A-Za-z'’.\-]*"

# the local part starts a run of its characters: unanchored, "a-a-a-..." without an "@" was read
# again from every position (quadratic)
_EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_URL_RE = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+", re.IGNORECASE)
_ID_LABEL_RE = re.compile(
    r"\b(?:MRN|MR\s?#|med(?:ical)?\s+rec(?:ord)?(?:\s+(?:no|number|#))?|patient[\s-]?id|"
    r"pt\.?\s?id|acct|account|accession|acc|SSN|social\s+security(?:\s+(?:no|number))?|"
    r"member\s+id|insurance\s+id|policy|CSN|FIN|encounter|visit\s+id|specimen|lab\s+(?:no|id)|"
    r"case\s+(?:no|number|#)|record)\.?(?:\s*(?:#|no\.?|number|num))?\s*[:#=\-]?\s*"
    r"(?P<v>[A-Za-z]{0,4}-?\d[\dA-Za-z\-]{2,})",
    re.IGNORECASE,
)
_SSN_RE = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_LONG_NUMBER_RE = re.compile(r"\b\d{6,}\b")
_ALNUM_ID_RE = re.compile(r"\b[A-Z]{1,4}-?\d{5,}[A-Z]?\b|\b[A-Z]{1,3}\d{2}-\d{3,}\b")
_PHONE_RES = (
    re.compile(
        r"(?<![\w+])(?:\+?1[ \t.\-]?)?(?:\(\d{3}\)[ \t.\-]?|\d{3}[ \t.\-])\d{3}[ \t.\-]\d{4}\b"
    ),
    re.compile(r"(?<![\w+])\+\d{1,3}(?:[ \t.\-]?\d{2,4}){2,4}\b"),
    re.compile(r"\b\d{3}-\d{4}\b"),
)
_PAGER_RE = re.compile(
    r"\b(?:pager|pgr|beeper|ext\.?|extension)\s*#?:?\s*(?P<v>\d[\d\-]{3,})", re.IGNORECASE
)
_ADDRESS_RES = (
    re.compile(
        rf"\b\d{{1,6}}[ \t]+(?:(?:{_CAP}|\d+(?:st|nd|rd|th))[ \t]+){{1,4}}{_SUFFIX}\b\.?"
        r"(?:,?[ \t]*(?:Apt|Apartment|Suite|Ste|Unit|#)\.?[ \t]*[\w\-]+)?"
        rf"(?:,[ \t]*[A-Z][A-Za-z]+(?:[ \t]+[A-Z][A-Za-z]+){{0,2}})?"
        rf"(?:,?[ \t]*{_STATE}\b)?(?:[ \t]*\d{{5}}(?:-\d{{4}})?)?"
    ),
    re.compile(
        rf"\b(?:[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+){{0,2}},[ \t]*)?{_STATE}[ \t]+\d{{5}}"
        r"(?:-\d{4})?\b"
    ),
    re.compile(rf"\b[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)?[ \t]+{_SUFFIX_FULL}\b"),
    re.compile(r"\bP\.?[ \t]?O\.?[ \t]+Box[ \t]+\d+\b", re.IGNORECASE),
)
_AGE_RES = (
    re.compile(r"\b(?P<n>\d{2,3})[ \t-]*(?:years?|yrs?|y)[ \t-]*old\b", re.IGNORECASE),
    re.compile(r"\b(?P<n>\d{2,3})[ \t]*(?:yo|y/o|y\.o\.|yr|yrs)(?![\w/])", re.IGNORECASE),
    re.compile(r"\b(?:age|aged)[ \t]*:?[ \t]*(?P<n>\d{2,3})\b", re.IGNORECASE),
)
_DATE_RES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(?P<y>\d{4})(?P<sep>[\-/.])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})\b"), "ymd"),
    (re.compile(r"\b(?P<a>\d{1,2})(?P<sep>[/\-])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4})\b"), "mdy"),
    (re.compile(r"(?<![\w/.])(?P<a>\d{1,2})(?P<sep>/)(?P<b>\d{1,2})/(?P<y>\d{2})(?![\w/])"), "mdy"),
    (re.compile(r"\b(?P<a>\d{1,2})(?P<sep>\.)(?P<b>\d{1,2})\.(?P<y>\d{4})\b"), "dmy"),
    (re.compile(rf"\b{_MON}[ \t]+{_DAY},?[ \t]+(?P<y>\d{{4}})\b"), "written"),
    (re.compile(rf"\b{_DAY}[ \t]+{_MON},?[ \t]+(?P<y>\d{{4}})\b"), "written"),
    (re.compile(rf"\b{_MON},?[ \t]+(?:of[ \t]+)?(?P<y>\d{{4}})\b"), "written"),
    (re.compile(rf"\b{_MON}[ \t]+{_DAY}\b(?![ \t]*(?:%|\d))"), "written"),
    (re.compile(r"(?<![\w/.])(?P<m>0?[1-9]|1[0-2])/(?P<y>(?:19|20)\d{2})\b(?!/\d)"), "my"),
    (
        re.compile(r"(?<![\w/.\-])(?P<m>0?[1-9]|1[0-2])/(?P<d>0?[1-9]|[12]\d|3[01])(?![\w/.%])"),
        "md",
    ),
)
# a "m/d" that is a ratio or a dose rather than a date
_NOT_MONTH_DAY_AFTER = re.compile(
    r"[ \t]*(?:ppd|nodes?|lns?|cores?|cycles?|doses?|fx|fractions?|positive|pos|neg|of|\+|-|"
    r"lymph|slides?|blocks?|specimens?|stations?|sites?|tabs?|mg|days?|wk|weeks?|pain|strength)\b",
    re.IGNORECASE,
)
_NOT_MONTH_DAY_BEFORE = re.compile(
    r"(?:ecog|ps|grade|score|gleason|g|bp|x)[ \t:=]*$", re.IGNORECASE
)
_LOOK_BEHIND = 64
# Name patterns are Unicode-aware (``regex``: ``\p{Lu}``/``\p{L}``), so "Dr. Jörg", "Ayşe Çelik"
# and "Nguyễn" are words like any other; the standard ``re`` has no letter-case classes.
_PARTICLE = (
    r"(?:van|der|den|de|la|las|los|le|du|des|di|da|del|della|dos|das|von|zu|ter|ten|bin|ibn|"
    r"bint|abu|al|el|ould|mac|ní|nic|ó|y|Van|Der|Den|De|La|Le|Du|Des|Di|Da|Del|Della|Dos|Von|"
    r"Ter|Ten|Bin|Ibn|Abu|Al|El|Ould|Mac|Ní|Nic|Ó)"
)
# a capitalised word has a lower-case letter after the first ("Nguyễn", "McDonald", "O'Neill");
# a lone capital is an initial only with its dot, so "MD" is never "M" + "D"
# Every word starts where no letter, hyphen or apostrophe precedes it, and its repeats are
# possessive: a long run of "Aaaa-Aaaa-..." is then read once, not once per starting letter.
_UWORD = (
    r"(?<![\p{L}\p{M}'’\-])(?:\p{Lu}['’])?\p{Lu}[\p{Ll}\p{Lm}]++(?:\p{Lu}[\p{Ll}\p{Lm}]++)?+"
    r"(?:-\p{L}[\p{Ll}\p{Lm}]++)*+(?:['’]s)?+(?![\p{L}\p{M}])"
)
_UTITLE_WORD = rf"(?:{_UWORD}|\p{{Lu}}\.)"
_UCAPS_WORD = r"(?<![\p{L}\p{M}'’\-])\p{Lu}{2,}+(?:['’\-]\p{Lu}++)*+(?![\p{L}\p{M}])"
_UNAME_WORD = rf"(?:{_PARTICLE}[ \t]+){{0,3}}(?:{_UTITLE_WORD}|{_UCAPS_WORD})"
_UNAME_PART = rf"(?:{_PARTICLE}[ \t]+){{0,3}}{_UTITLE_WORD}"  # a title-case part, particles first
_TITLE_RE = regex.compile(
    r"\b(?:Dr|Drs|Mr|Mrs|Ms|Miss|Mx|Prof|Professor)\.?[ \t]+"
    rf"(?P<v>{_UNAME_PART}(?:[ \t]+{_UNAME_PART}){{0,2}}"
    rf"|{_UCAPS_WORD}(?:[ \t]+{_UCAPS_WORD})?)"
    rf"|\b(?:DR|MR|MRS|MS)\.?[ \t]+(?P<caps>{_UCAPS_WORD}(?:[ \t]+{_UCAPS_WORD})?)"
)
_LABELS = (
    r"name|pt\s+name|patient\s+name|pcp|attending|referring(?:\s+(?:physician|provider|md|"
    r"doctor))?|(?:electronically\s+)?signed(?:\s+by)?|dictated\s+by|provider|surgeon|"
    r"oncologist|emergency\s+contact|next\s+of\s+kin|nok|spouse|guardian|proxy|hcp|cc|"
    r"author|resident|fellow|interpreter|caregiver|contact"
)
_LABEL_RE = regex.compile(
    rf"\b(?i:{_LABELS})[ \t]*[:#][ \t]*(?P<v>{_UNAME_WORD}(?:,?[ \t]+{_UNAME_WORD}){{0,4}})"
    # "Patient:" also starts "Patient: stable", so it needs two name words (Last, First)
    rf"|\b(?i:patient|pt)[ \t]*:[ \t]*(?P<v2>{_UNAME_WORD},?[ \t]+{_UNAME_WORD}"
    rf"(?:[ \t]+{_UNAME_WORD}){{0,2}})"
)
_CREDENTIALS = ("MD", "M.D.", "DO", "NP", "PA-C", "RN", "PhD", "FACP", "FRCP", "MBBS", "MBChB")
_CREDENTIAL_RE = regex.compile(
    rf"(?P<v>{_UNAME_PART}(?:[ \t]+{_UNAME_PART}){{0,3}})"
    r",?[ \t]+(?:" + "|".join(regex.escape(c) for c in _CREDENTIALS) + r")\b"
)
# a signature block: the line after a closing ("Sincerely,", "Regards", "--") is a name
_SIGNATURE_RE = regex.compile(
    r"(?im)^[ \t]*(?:sincerely|yours(?:\s+(?:sincerely|truly))?|(?:best|kind|warm)?\s*regards|"
    r"respectfully|cordially|with\s+thanks|best|--)[ \t]*,?[ \t]*\n[ \t]*"
    rf"(?P<v>(?-i:{_UNAME_WORD}(?:,?[ \t]+{_UNAME_WORD}){{0,5}}))"
)
# candidate words: letters (any script), inner apostrophes and hyphens; a word glued to digits
# ("EML4", "T790M") is a code, never a name
_WORD_RE = regex.compile(
    r"(?<![\w'’\-])\p{L}[\p{L}\p{M}]*+(?:['’][\p{L}\p{M}]++)*+(?:-[\p{L}\p{M}]++)*+(?![\w\-])"
)
_NAME_GAP_RE = regex.compile(r",?[ \t]{1,2}")
_TITLES = frozenset("dr drs mr mrs ms miss mx prof professor sr jr".split())
#: A heading in capitals holds few words; a longer line in capitals is prose (a pathology line).
MAX_HEADING_WORDS = 8


#: Where the safelist comes from: philter-lite's ``nonames`` set (English and medical words with
#: the names removed; Philter's safelist design), in the package's ``filters/set.toml``.
SAFELIST_PACKAGE = "philter_lite"
SAFELIST_RESOURCE = "filters/set.toml"


@lru_cache(maxsize=1)
def safe_words() -> frozenset[str]:
    """Return the lower-case words that are not names on their own (the safelist).

    philter-lite's ``nonames`` set, plus :data:`oncopipe.notes.rules.CLINICAL_WORDS` and the
    eponyms kept on purpose (:data:`oncopipe.notes.rules.EPONYMS`). Read once per process: only
    the ``nonames`` line of the file is parsed, as a JSON array (a TOML array of plain strings
    is one), and the package itself is not imported.

    Raises:
        RuntimeError: philter-lite is not installed or its safelist cannot be read.
    """
    import json
    from importlib.util import find_spec
    from pathlib import Path

    try:
        # find the file without importing philter_lite: its __init__ parses every filter (~10 s)
        spec = find_spec(SAFELIST_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"no module named {SAFELIST_PACKAGE!r}")
        path = Path(next(iter(spec.submodule_search_locations))) / SAFELIST_RESOURCE
        with path.open(encoding="utf-8") as f:
            line = next(ln for ln in f if ln.startswith("nonames"))
        array = line.split("=", 1)[1].strip()
        words = json.loads(regex.sub(r",\s*\]$", "]", array))
    except (ModuleNotFoundError, OSError, StopIteration, ValueError) as e:
        raise RuntimeError(
            f"cannot read the scrubber's safelist ({SAFELIST_PACKAGE} {SAFELIST_RESOURCE}): {e}"
        ) from e
    return frozenset(w.lower() for w in words if isinstance(w, str)) | CLINICAL_WORDS | EPONYMS


def _stop(word: str) -> bool:
    return word.lower().strip(".'’") in CLINICAL_WORDS


def _name_span(text: str, start: int, value: str) -> tuple[int, int] | None:
    """Trim a candidate name at its first clinical/label word; None when nothing is left."""
    end = start
    for m in re.finditer(r"[^\s,]+", value):
        if _stop(m.group()):
            break
        end = start + m.end()
    return (start, end) if end > start else None


def _base(word: str) -> str:
    """Return ``word`` without a possessive ("Nguyen's" -> "Nguyen").

    The suffixes are "'s", "’s", "'" and "’", each taken only from a word longer than the
    suffix plus one letter; the last letter decides which can apply (a call per word).
    """
    last = word[-1:]
    if last == "s":
        return word[:-2] if len(word) > 3 and word[-2] in "'’" else word
    if last in ("'", "’") and len(word) > 2:
        return word[:-1]
    return word


def _is_lexicon_name(word: str) -> bool:
    base = _base(word)
    lower = base.lower()
    if lower in CLINICAL_WORDS or not (lower in FIRST_NAMES or lower in SURNAMES):
        return False
    if base[0].isupper() and base[1:].islower():
        return True
    return base.isupper() and len(base) >= 4  # NAME, FIRST in capitals; short capitals are codes


def _title_case(word: str) -> bool:
    """A capitalised word with lower-case letters after the first ("Nguyễn", "McDonald")."""
    return word[:1].isupper() and any(ch.islower() for ch in word[1:])


def _unknown(word: str) -> bool:
    """Return True when a word is outside the vocabulary (every hyphen part is checked)."""
    vocabulary = safe_words()
    for part in _base(word).replace("’", "'").split("-"):
        lower = part.lower()
        if len(part) < 2 or lower in NAME_PARTICLES:
            continue
        if lower not in vocabulary and lower.split("'")[-1] not in vocabulary:
            return True
    return False


def _capitalised(word: str) -> bool:
    return word[:1].isupper() and not _stop(word) and (word[1:].islower() or word.isupper())


def _neighbour(word: str) -> bool:
    """A word that joins a name next to it: capitalised, not clinical, or a particle."""
    lower = _base(word).lower()
    if lower in NAME_PARTICLES:
        return True
    return word[:1].isupper() and not _stop(_base(word)) and lower not in _TITLES


class _Collector:
    def __init__(self, text: str) -> None:
        self.text = text
        self.hits: list[_Hit] = []

    def add(self, start: int, end: int, priority: int, category: str, replacement: str) -> None:
        if end > start:
            self.hits.append(_Hit(start, end, priority, category, replacement))

    def regex(
        self,
        regex: re.Pattern[str],
        priority: int,
        category: str,
        replacement: str | Callable[[re.Match[str]], str | None],
        group: str | int = 0,
    ) -> None:
        for m in regex.finditer(self.text):
            value = replacement(m) if callable(replacement) else replacement
            if value is not None:
                self.add(m.start(group), m.end(group), priority, category, value)

    def resolve(self) -> tuple[str, dict[str, int]]:
        """Apply the hits: the highest priority (then longest) wins an overlap.

        Hits with a constant surrogate are first merged with overlapping hits of their category
        ("Maria K." and "K. Keller" become one name), and what a lost overlap leaves uncovered
        is still replaced by the category's surrogate, so no detected character survives.
        """
        # taken hits never overlap; kept sorted by start, so the hits a new one overlaps are found
        # by bisection (a scan of every taken hit made long notes quadratic)
        taken: list[_Hit] = []
        starts: list[int] = []
        for hit in sorted(self._merged(), key=lambda h: (h.priority, h.start - h.end, h.start)):
            pieces, cursor = [], hit.start
            k = max(bisect.bisect_right(starts, hit.start) - 1, 0)
            while k < len(taken) and taken[k].start < hit.end:
                t = taken[k]
                if t.end > cursor:
                    if t.start > cursor:
                        pieces.append((cursor, t.start))
                    cursor = max(cursor, t.end)
                k += 1
            if cursor < hit.end:
                pieces.append((cursor, hit.end))
            if pieces == [(hit.start, hit.end)]:
                new = [hit]
            else:
                new = [
                    _Hit(s, e, hit.priority, hit.category, _SURROGATE[hit.category])
                    for s, e in pieces
                    if re.search(r"\w", self.text[s:e])
                ]
            for h in new:
                k = bisect.bisect_left(starts, h.start)
                starts.insert(k, h.start)
                taken.insert(k, h)
        out, pos, counts = [], 0, Counter[str]()
        for hit in sorted(taken, key=lambda h: h.start):
            out += [self.text[pos : hit.start], hit.replacement]
            pos = hit.end
            counts[hit.category] += 1
        out.append(self.text[pos:])
        return "".join(out), dict(counts)

    def _merged(self) -> list[_Hit]:
        merged: list[_Hit] = []
        constant = [h for h in self.hits if h.replacement == _SURROGATE[h.category]]
        for hit in sorted(constant, key=lambda h: (h.category, h.start)):
            last = merged[-1] if merged else None
            if last and last.category == hit.category and hit.start < last.end:
                merged[-1] = _Hit(
                    last.start,
                    max(last.end, hit.end),
                    min(last.priority, hit.priority),
                    hit.category,
                    hit.replacement,
                )
            else:
                merged.append(hit)
        return merged + [h for h in self.hits if h.replacement != _SURROGATE[h.category]]


def _ages(c: _Collector) -> None:
    for pattern in _AGE_RES:
        for m in pattern.finditer(c.text):
            if int(m["n"]) > 89:
                label = m.group()[: m.start("n") - m.start()] if pattern is _AGE_RES[2] else ""
                c.add(m.start(), m.end(), 3, "age", label + AGE)


def _dates(c: _Collector, shifter: _DateShifter) -> None:
    for pattern, kind in _DATE_RES:
        for m in pattern.finditer(c.text):
            if kind == "ymd":
                value = shifter.numeric_ymd(m)
            elif kind in ("mdy", "dmy"):
                value = shifter.numeric_mdy(m, day_first=kind == "dmy")
            elif kind == "my":
                value = shifter.month_year_numeric(m)
            elif kind == "md":
                # look back a bounded window: a search from 0 made every "m/d" cost the note
                behind = max(0, m.start() - _LOOK_BEHIND)
                if _NOT_MONTH_DAY_AFTER.match(c.text, m.end()) or _NOT_MONTH_DAY_BEFORE.search(
                    c.text, behind, m.start()
                ):
                    continue
                value = shifter.month_day_numeric(m)
            else:
                value = shifter.written(m)
            c.add(m.start(), m.end(), 4, "date", value)


class _Lines:
    """Facts about the line holding an offset, computed once per line (linear in the note)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._facts: dict[int, tuple[bool, int]] = {}

    def _line(self, offset: int) -> tuple[bool, int]:
        k = bisect.bisect_right(self.starts, offset) - 1
        if k not in self._facts:
            end = self.starts[k + 1] if k + 1 < len(self.starts) else len(self.text)
            line = self.text[self.starts[k] : end]
            self._facts[k] = (not any(ch.islower() for ch in line), len(line.split()))
        return self._facts[k]

    def in_capitals(self, offset: int) -> bool:
        """Return True when the line is written in capitals (no lower-case letter)."""
        return self._line(offset)[0]

    def words(self, offset: int) -> int:
        """Return how many words the line has."""
        return self._line(offset)[1]


def _proper_noun_mid_sentence(text: str, words: list[regex.Match[str]], i: int) -> bool:
    """A vocabulary word written capitalised inside lower-case prose ("spoke with Zoran today").

    English capitalises a common word mid-sentence only when it is a proper noun; clinical words,
    eponyms, months and weekdays are excluded (:data:`CLINICAL_WORDS`, :data:`EPONYMS`).
    """
    if i == 0 or not words[i - 1].group().islower():
        return False
    lower = _base(words[i].group()).lower()
    if lower in CLINICAL_WORDS or lower in EPONYMS or lower in _TITLES:
        return False
    if not words[i].group()[1:].islower():
        return False
    if not regex.fullmatch(r"[ \t]+", text[words[i - 1].end() : words[i].start()]):
        return False
    after = text[words[i].end() : words[i].end() + 3]
    if i + 1 < len(words) and text[words[i].end() : words[i + 1].start()].strip(" \t") == "":
        return words[i + 1].group()[:1].islower()
    return bool(regex.match(r"[.,;:!?)]|$", after))


def _line_words(text: str, start: int) -> int:
    """Return how many words the line holding ``start`` has."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", start)
    return len(text[line_start : line_end if line_end >= 0 else len(text)].split())


#: Capitalised possessives that are not a person's ("Today's CT", "Yesterday's labs").
_TIME_WORDS = frozenset("today yesterday tomorrow tonight week month year night morning".split())


def _possessive_proper_noun(word: str) -> bool:
    """A capitalised possessive ("Shin's CT"): a person's, unless clinical, an eponym or a time.

    Common nouns in notes take a possessive in lower case ("the patient's"); eponymous diseases
    ("Hodgkin's", "Crohn's") are in :data:`EPONYMS`.
    """
    base = _base(word)
    if base == word or not _title_case(base):
        return False
    lower = base.lower()
    return not (lower in CLINICAL_WORDS or lower in EPONYMS or lower in _TIME_WORDS)


def _seed(text: str, words: list[regex.Match[str]], i: int, lines: _Lines) -> bool:
    """Return True when word ``i`` is a name by itself, without a title or a label.

    * a word of the name lexicon (:func:`_is_lexicon_name`);
    * a capitalised word ("Nguyễn", "O'Neill", "Al-Sayed", "Tiihonen's") that is not in the
      vocabulary of :func:`safe_words`: the safelist design of recall-oriented de-identifiers
      (Philter), which needs no list of names;
    * a word in capitals outside the vocabulary, on a heading line written in capitals
      ("ONCOLOGY NOTE - ZHAI WENJUN"); elsewhere capitals are acronyms and gene names.
    """
    word = words[i].group()
    if _is_lexicon_name(word):
        return True
    base = _base(word)
    if _title_case(base):
        return (
            _unknown(base)
            or _proper_noun_mid_sentence(text, words, i)
            or _possessive_proper_noun(word)
        )
    start = words[i].start()
    if base.isupper() and len(base) >= 2 and lines.in_capitals(start) and _unknown(base):
        short = lines.words(start) <= MAX_HEADING_WORDS
        pair = any(
            0 <= j < len(words)
            and words[j].group().isupper()
            and _unknown(words[j].group())
            and _NAME_GAP_RE.fullmatch(
                text[min(words[i].end(), words[j].end()) : max(words[i].start(), words[j].start())]
            )
            for j in (i - 1, i + 1)
        )
        return short or pair
    return False


def _grow(text: str, words: list[regex.Match[str]], i: int) -> tuple[int, int]:
    """Return the span of the name around seed word ``i``, taking its neighbours.

    A name takes the capitalised, non-clinical words and the particles next to it ("van der",
    "de la", a middle initial, a known given name beside an unknown surname): over-scrubbing a
    word beats leaking half a name. A sentence end stops it, except after an initial ("M. Kim").
    Particles are only kept inside a name, never at its edge.
    """
    lo = hi = i
    for step in (1, -1):
        j, edge = i, i
        while 0 <= j + step < len(words) and abs(j + step - i) <= 4:
            left, right = (words[j], words[j + step]) if step == 1 else (words[j + step], words[j])
            gap = text[left.end() : right.start()]
            initial = len(left.group()) == 1
            if not (
                _NAME_GAP_RE.fullmatch(gap)
                or (gap.startswith(".") and initial and regex.fullmatch(r"\.[ \t]+", gap))
            ):
                break
            nxt = words[j + step].group()
            if not _neighbour(nxt):
                break
            j += step
            if _base(nxt).lower() not in NAME_PARTICLES or (step == -1 and nxt[:1].isupper()):
                edge = j
        if step == 1:
            hi = edge
        else:
            lo = edge
    return words[lo].start(), words[hi].end()


def _credentials(text: str) -> Iterator[regex.Match[str]]:
    """Return ``_CREDENTIAL_RE.finditer(text)``, searching only the lines that hold a credential.

    A match holds its credential ("MD", "PhD"...) and never a line break (its parts are letters,
    spaces, tabs, dots, apostrophes, hyphens and a comma), so it lies inside one line that holds
    one. A line is searched with ``pos``/``endpos``: look-behinds see the text before ``pos``,
    and ``endpos`` reads as the end of the text, which the ``\\b`` and look-aheads after a
    name treat as they treat the line break there. Searching the whole note (the name part is
    tried at every letter) was a third of the scrubber's time.
    """
    pos = 0
    while pos <= len(text):
        end = text.find("\n", pos)
        end = len(text) if end < 0 else end
        if any(c in text[pos:end] for c in _CREDENTIALS):
            yield from _CREDENTIAL_RE.finditer(text, pos, end)
        pos = end + 1


def _names(c: _Collector, patient_names: Sequence[str]) -> None:
    text = c.text
    parts = {p for full in patient_names for p in re.split(r"[\s,]+", full.strip()) if len(p) > 1}
    for value in parts | {n.strip() for n in patient_names if n.strip()}:
        for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.IGNORECASE):
            c.add(m.start(), m.end(), 5, "name", NAME)
    found = chain(_TITLE_RE.finditer(text), _LABEL_RE.finditer(text), _credentials(text),
                  _SIGNATURE_RE.finditer(text))  # fmt: skip
    for m in found:
        group = next(g for g in ("v", "v2", "caps") if g in m.re.groupindex and m[g])
        span = _name_span(text, m.start(group), m[group])
        if span:
            c.add(*span, 6, "name", NAME)
    words = list(_WORD_RE.finditer(text))
    lines = _Lines(text)
    for i in range(len(words)):
        if _seed(text, words, i, lines):
            c.add(*_grow(text, words, i), 6, "name", NAME)


def scrub(
    text: str,
    *,
    patient_names: Sequence[str] = (),
    identifiers: Sequence[str] = (),
    date_shift_days: int | None,
) -> ScrubResult:
    """Return ``text`` with PHI replaced by bracketed surrogates, and the counts per category.

    ``date_shift_days`` is added to every date (``oncopipe.imaging.deid.date_shift_days`` gives a
    negative number: into the past); None writes ``[DATE]`` instead. ``identifiers`` (e.g. the
    source patient id) are removed wherever they appear, as ``[ID]``.
    """
    c = _Collector(text)
    for value in sorted({i.strip() for i in identifiers if i.strip()}, key=len, reverse=True):
        for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.IGNORECASE):
            c.add(m.start(), m.end(), 0, "id", ID)
    c.regex(_EMAIL_RE, 0, "email", EMAIL)
    for m in _URL_RE.finditer(text):
        c.add(m.start(), m.start() + len(m.group().rstrip(".,;:)]")), 0, "url", URL)
    c.regex(_ID_LABEL_RE, 1, "id", ID, group="v")
    c.regex(_SSN_RE, 1, "id", ID)
    for pattern in _ADDRESS_RES:
        c.regex(pattern, 2, "address", ADDRESS)
    for pattern in _PHONE_RES:
        c.regex(pattern, 3, "phone", PHONE)
    c.regex(_PAGER_RE, 3, "phone", PHONE, group="v")
    _ages(c)
    _dates(c, _DateShifter(date_shift_days))
    _names(c, patient_names)
    c.regex(_LONG_NUMBER_RE, 7, "id", ID)
    c.regex(_ALNUM_ID_RE, 7, "id", ID)
    scrubbed, counts = c.resolve()
    log.debug("scrubbed note: %s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return ScrubResult(scrubbed, counts)
