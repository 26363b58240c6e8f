"""PHI scrubbing of clinical note text: hand-written regexes plus a name lexicon.

Why not a library: no maintained de-identification package installs and runs offline here with
acceptable quality. philter needs its large pattern/model bundle, the PhysioNet ``deid`` tool is
Perl, and the neural ones (Presidio's spaCy/transformer recognisers, NLM Scrubber) need model
downloads or Java. So this module is explicit rules, biased towards over-scrubbing: a name-like
word that is not a clinical term is removed rather than kept.

What is replaced (counts per category are returned, never the values):

* ``name``: the patient's names when known (whole words, any case), names after a title (Dr.,
  Mr., Mrs., Ms., Miss, Prof.), after a label (``Name:``, ``Patient:``, ``PCP:``, ``Signed by``),
  before ``, MD``/``DO``/``RN``..., and capitalised words of the first-name/surname lexicon of
  :mod:`oncopipe.notes.rules` together with a capitalised neighbour -> ``[NAME]``.
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

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from oncopipe.notes.rules import CLINICAL_WORDS, FIRST_NAMES, SURNAMES

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
_TITLE_WORD = r"(?:[A-Z][a-z'’]+(?:-[A-Z][a-z'’]+)?|[A-Z]\.)"
_NAME_WORD = rf"(?:{_TITLE_WORD}|[A-Z]{{2,}})"  # labelled fields may be in capitals

_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
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
_TITLE_RE = re.compile(
    r"\b(?:Dr|Drs|Mr|Mrs|Ms|Miss|Mx|Prof|Professor)\.?[ \t]+"
    rf"(?P<v>{_TITLE_WORD}(?:[ \t]+{_TITLE_WORD}){{0,2}}|[A-Z]{{2,}}(?:[ \t]+[A-Z]{{2,}})?)"
    r"|\b(?:DR|MR|MRS|MS)\.?[ \t]+(?P<caps>[A-Z]{2,}(?:[ \t]+[A-Z]{2,})?)"
)
_LABELS = (
    r"name|pt\s+name|patient\s+name|pcp|attending|referring(?:\s+(?:physician|provider|md|"
    r"doctor))?|(?:electronically\s+)?signed(?:\s+by)?|dictated\s+by|provider|surgeon|"
    r"oncologist|emergency\s+contact|next\s+of\s+kin|nok|spouse|guardian|proxy|hcp"
)
_LABEL_RE = re.compile(
    rf"\b(?i:{_LABELS})[ \t]*[:#][ \t]*(?P<v>{_NAME_WORD}(?:,?[ \t]+{_NAME_WORD}){{0,3}})"
    # "Patient:" also starts "Patient: stable", so it needs two name words (Last, First)
    rf"|\b(?i:patient|pt)[ \t]*:[ \t]*(?P<v2>{_NAME_WORD},?[ \t]+{_NAME_WORD}"
    rf"(?:[ \t]+{_NAME_WORD})?)"
)
_CREDENTIAL_RE = re.compile(
    rf"(?P<v>{_TITLE_WORD}(?:[ \t]+{_TITLE_WORD}){{0,2}}),?[ \t]+"
    r"(?:MD|M\.D\.|NP|PA-C|RN|PhD|FACP|FRCP|MBBS)\b"
)
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'’]*(?:-[A-Za-z]+)*")


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


def _is_lexicon_name(word: str) -> bool:
    base = word.split("'")[0].split("’")[0]
    lower = base.lower()
    if lower in CLINICAL_WORDS or not (lower in FIRST_NAMES or lower in SURNAMES):
        return False
    if base[0].isupper() and base[1:].islower():
        return True
    return base.isupper() and len(base) >= 4  # NAME, FIRST in capitals; short capitals are codes


def _capitalised(word: str) -> bool:
    return word[:1].isupper() and not _stop(word) and (word[1:].islower() or word.isupper())


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
        taken: list[_Hit] = []
        for hit in sorted(self._merged(), key=lambda h: (h.priority, h.start - h.end, h.start)):
            pieces = [(hit.start, hit.end)]
            for t in taken:
                pieces = [
                    part
                    for s, e in pieces
                    for part in ((s, min(e, t.start)), (max(s, t.end), e))
                    if part[1] > part[0]
                ]
            if pieces == [(hit.start, hit.end)]:
                taken.append(hit)
                continue
            for s, e in pieces:
                if re.search(r"\w", self.text[s:e]):
                    taken.append(_Hit(s, e, hit.priority, hit.category, _SURROGATE[hit.category]))
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
    for regex in _AGE_RES:
        for m in regex.finditer(c.text):
            if int(m["n"]) > 89:
                label = m.group()[: m.start("n") - m.start()] if regex is _AGE_RES[2] else ""
                c.add(m.start(), m.end(), 3, "age", label + AGE)


def _dates(c: _Collector, shifter: _DateShifter) -> None:
    for regex, kind in _DATE_RES:
        for m in regex.finditer(c.text):
            if kind == "ymd":
                value = shifter.numeric_ymd(m)
            elif kind in ("mdy", "dmy"):
                value = shifter.numeric_mdy(m, day_first=kind == "dmy")
            elif kind == "my":
                value = shifter.month_year_numeric(m)
            elif kind == "md":
                if _NOT_MONTH_DAY_AFTER.match(c.text, m.end()) or _NOT_MONTH_DAY_BEFORE.search(
                    c.text, 0, m.start()
                ):
                    continue
                value = shifter.month_day_numeric(m)
            else:
                value = shifter.written(m)
            c.add(m.start(), m.end(), 4, "date", value)


def _names(c: _Collector, patient_names: Sequence[str]) -> None:
    text = c.text
    parts = {p for full in patient_names for p in re.split(r"[\s,]+", full.strip()) if len(p) > 1}
    for value in parts | {n.strip() for n in patient_names if n.strip()}:
        for m in re.finditer(rf"(?<!\w){re.escape(value)}(?!\w)", text, re.IGNORECASE):
            c.add(m.start(), m.end(), 5, "name", NAME)
    for regex in (_TITLE_RE, _LABEL_RE, _CREDENTIAL_RE):
        for m in regex.finditer(text):
            group = next(g for g in ("v", "v2", "caps") if g in m.re.groupindex and m[g])
            span = _name_span(text, m.start(group), m[group])
            if span:
                c.add(*span, 6, "name", NAME)
    words = list(_WORD_RE.finditer(text))
    for i, w in enumerate(words):
        if not _is_lexicon_name(w.group()):
            continue
        # a known name takes its capitalised neighbours (a middle initial, an unknown surname
        # or first name, "KELLER, MARIA"): over-scrubbing a word beats leaking half a name
        start, end = w.start(), w.end()
        if i + 1 < len(words) and _capitalised(words[i + 1].group()):
            gap = text[end : words[i + 1].start()]
            if re.fullmatch(r",?[ \t]+|\.[ \t]+", gap) and not (
                gap.startswith(".") and len(w.group()) > 1
            ):
                end = words[i + 1].end()
        if i > 0 and _capitalised(words[i - 1].group()):
            gap = text[words[i - 1].end() : start]
            if re.fullmatch(r",?[ \t]+|\.[ \t]+", gap) and (
                not gap.startswith(".") or len(words[i - 1].group()) == 1
            ):
                start = words[i - 1].start()
        c.add(start, end, 6, "name", NAME)


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
    for regex in _ADDRESS_RES:
        c.regex(regex, 2, "address", ADDRESS)
    for regex in _PHONE_RES:
        c.regex(regex, 3, "phone", PHONE)
    c.regex(_PAGER_RE, 3, "phone", PHONE, group="v")
    _ages(c)
    _dates(c, _DateShifter(date_shift_days))
    _names(c, patient_names)
    c.regex(_LONG_NUMBER_RE, 7, "id", ID)
    c.regex(_ALNUM_ID_RE, 7, "id", ID)
    scrubbed, counts = c.resolve()
    log.debug("scrubbed note: %s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    return ScrubResult(scrubbed, counts)
