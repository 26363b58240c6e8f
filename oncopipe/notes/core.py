"""Parse one clinical note and turn it into scrubbed text plus concept rows.

A note is text with an optional header at the top, then a blank line, then the free text::

    Patient-ID: MRN-1234567
    Note-Date: 2026-03-14

    HISTORY: ...

The header's patient wins over the caller's fallback (the sample sheet's patient). Line breaks
are normalised to ``\\n``, so offsets index the text :func:`process_note` returns.

Encodings (:func:`decode_note`): a byte-order mark decides (UTF-8, UTF-16); otherwise each line
is UTF-8 when it decodes as UTF-8 and Windows-1252 when it does not, the five bytes cp1252 leaves
undefined taking their Latin-1 meaning (the WHATWG "windows-1252" decoder, which is what
"latin1" means on the web). Legacy exports of notes are cp1252 or Latin-1 (a superset and a
subset of the same letters), and a UTF-8 note with one pasted cp1252 line keeps its UTF-8 lines
intact. No replacement character is ever put in place of a letter. charset-normalizer and
chardet were measured on short cp1252 notes and guessed cp1250 or Big5 ("Lefèvre" ->
"Lefčvre"), so their guess is not used.

A note longer than ``max_bytes`` (:data:`DEFAULT_MAX_NOTE_BYTES`, 1 MB by default) is refused
with :class:`NoteTooLargeError` before it is decoded.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from oncopipe import catalog
from oncopipe.errors import InputError, MissingPatientError

if TYPE_CHECKING:
    import pyarrow as pa

    from oncopipe.notes.nlp import Concept

log = logging.getLogger(__name__)

#: Share of control characters (other than tab, CR, LF, FF) above which a note is binary.
MAX_CONTROL_FRACTION = 0.10
_ALLOWED_CONTROLS = frozenset("\t\r\n\f")
_HEADER_RE = re.compile(
    r"^(?P<key>patient-id|note-date)[ \t]*:[ \t]*(?P<value>.*?)[ \t]*$", re.IGNORECASE
)
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: Parquet columns of :func:`concept_rows`, in order.
#: The note-concepts table's columns, in order (:data:`oncopipe.catalog.NOTE_CONCEPTS`).
NOTES_COLUMNS = tuple(c.name for c in catalog.NOTE_CONCEPTS.columns)


class NoteInputError(InputError):
    """A note cannot be processed (empty, binary, bad header); quarantine it.

    The message names the source and the reason, never the note text.
    """

    reason_code = "invalid-note"


class NoteTooLargeError(NoteInputError):
    """A note is larger than the stage's size cap; quarantine it (the message gives the sizes)."""

    reason_code = "note-too-large"


#: Largest note processed, in bytes (``NOTES_MAX_BYTES`` in the stage's environment).
DEFAULT_MAX_NOTE_BYTES = 1_000_000


@dataclass(frozen=True)
class ParsedNote:
    """A note split into its header fields and body."""

    source_patient_id: str
    note_date: date | None
    body: str
    decode_replaced: bool = False
    encoding: str = "utf-8"


@dataclass(frozen=True)
class NoteResult:
    """What a note becomes: pseudonymous keys, scrubbed text and concepts (no PHI)."""

    patient_key: str
    note_id: str
    note_date: str | None
    text: str
    concepts: list[Concept]
    decode_replaced: bool
    scrub_counts: dict[str, int] = field(default_factory=dict)
    encoding: str = "utf-8"


def _latin1_for_undefined(error: UnicodeError) -> tuple[str, int]:
    # cp1252 leaves 0x81, 0x8D, 0x8F, 0x90 and 0x9D undefined; Latin-1 (and WHATWG) maps them to
    # the C1 control of the same number, so a legacy note always decodes without U+FFFD
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return error.object[error.start : error.end].decode("latin-1"), error.end


codecs.register_error("oncopipe-latin1", _latin1_for_undefined)
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip


def decode_note(data: bytes, source: str) -> tuple[str, str]:
    """Return the text of a note and the encoding it was read in.

    The encoding is ``utf-8``, ``utf-8-sig``/``utf-16`` (from a byte-order mark), ``cp1252``
    (the lines that are not ASCII are not UTF-8 either) or ``utf-8+cp1252`` (lines of each).
    See the module docstring for why.

    Raises:
        NoteInputError: a byte-order mark whose encoding does not decode the note.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding), encoding
            except UnicodeDecodeError:
                raise NoteInputError(
                    source, f"note starts with a {encoding} byte-order mark but is not {encoding}"
                ) from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    lines, kinds = [], set()
    for line in data.splitlines(keepends=True):
        try:
            lines.append(line.decode("utf-8"))
            if not line.isascii():
                kinds.add("utf-8")
        except UnicodeDecodeError:
            lines.append(line.decode("cp1252", errors="oncopipe-latin1"))
            kinds.add("cp1252")
    return "".join(lines), "+".join(sorted(kinds, key=("utf-8", "cp1252").index))


def _decode(data: bytes, source: str) -> tuple[str, str]:
    if not data.strip():
        raise NoteInputError(source, "note is empty")
    if b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise NoteInputError(source, "note is binary (NUL bytes)")
    text, encoding = decode_note(data, source)
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise NoteInputError(source, "note is empty")
    controls = sum(
        1 for ch in text if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc"
    )
    if controls > MAX_CONTROL_FRACTION * len(text):
        raise NoteInputError(
            source, f"note is binary ({controls} of {len(text)} characters are control characters)"
        )
    return text.replace("\r\n", "\n").replace("\r", "\n"), encoding


def check_size(size: int, source: str, max_bytes: int = DEFAULT_MAX_NOTE_BYTES) -> None:
    """Refuse a note of ``size`` bytes when it is larger than ``max_bytes``.

    Raises:
        NoteTooLargeError: ``size > max_bytes``; the message gives both sizes.
        ValueError: ``max_bytes`` is not positive.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    if size > max_bytes:
        raise NoteTooLargeError(
            source, f"note is {size} bytes, larger than the {max_bytes}-byte limit of the stage"
        )


def parse_note(
    data: bytes,
    source: str,
    *,
    fallback_patient_id: str | None = None,
    fallback_note_date: date | None = None,
    max_bytes: int = DEFAULT_MAX_NOTE_BYTES,
) -> ParsedNote:
    """Return the header fields and body of a note.

    The header wins over the fallbacks (the sample sheet's patient and note date). The text is
    decoded by :func:`decode_note` (UTF-8, or cp1252 for lines that are not), so
    ``decode_replaced`` is always False now; it stays in the result for readers of old runs.

    Raises:
        NoteTooLargeError: more than ``max_bytes`` bytes.
        NoteInputError: empty or whitespace only, binary (NUL bytes or more than 10 % control
            characters), or a ``Note-Date`` that is not YYYY-MM-DD.
        MissingPatientError: no ``Patient-ID`` header and no fallback.
    """
    check_size(len(data), source, max_bytes)
    text, encoding = _decode(data, source)
    replaced = "\ufffd" in text and b"\xef\xbf\xbd" not in data
    lines = text.split("\n")
    fields: dict[str, str] = {}
    i = 0
    while i < len(lines) and not lines[i].strip():
        i += 1
    start = i
    while i < len(lines) and (m := _HEADER_RE.match(lines[i])):
        fields[m["key"].lower()] = m["value"]
        i += 1
    if i == start:
        body = text
    else:
        if i < len(lines) and not lines[i].strip():
            i += 1  # the blank line that ends the header
        body = "\n".join(lines[i:])
    note_date = fallback_note_date
    if raw_date := fields.get("note-date"):
        try:
            if not _DATE_RE.match(raw_date):
                raise ValueError(raw_date)
            note_date = date.fromisoformat(raw_date)
        except ValueError:
            raise NoteInputError(source, "Note-Date header is not a YYYY-MM-DD date") from None
    patient = (fields.get("patient-id") or "").strip() or (fallback_patient_id or "").strip()
    if not patient:
        raise MissingPatientError(
            source, "note has no Patient-ID header and the sample sheet gives no patient"
        )
    if not body.strip():
        raise NoteInputError(source, "note has a header but no text")
    return ParsedNote(patient, note_date, body, replaced, encoding)


def note_id_for(source: str) -> str:
    """Return the default note id: the first 16 hex digits of sha256(source).

    Object keys can hold PHI (a name in a file name), so the key itself is never the id.
    """
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


def process_note(
    data: bytes,
    source: str,
    *,
    secret: bytes,
    fallback_patient_id: str | None,
    note_id: str | None = None,
    patient_names: Sequence[str] = (),
    fallback_note_date: date | None = None,
    max_bytes: int = DEFAULT_MAX_NOTE_BYTES,
) -> NoteResult:
    """Parse, pseudonymise, scrub and extract one note.

    The patient key and the date shift come from the project secret and the source patient
    id, exactly as for images, so a note's dates line up with the same patient's DICOM dates.
    The source patient id is also scrubbed from the body wherever it appears; ``patient_names``
    (e.g. from the sample sheet) are scrubbed too, on top of the lexicon and title rules.

    Raises:
        NoteTooLargeError: see :func:`parse_note`.
        NoteInputError: see :func:`parse_note`.
        MissingPatientError: see :func:`parse_note`.
        ValueError: the secret is shorter than 32 bytes.
    """
    from oncopipe.notes.nlp import extract
    from oncopipe.notes.scrub import scrub
    from oncopipe.pseudonym import date_shift_days, patient_key

    parsed = parse_note(
        data,
        source,
        fallback_patient_id=fallback_patient_id,
        fallback_note_date=fallback_note_date,
        max_bytes=max_bytes,
    )
    key = patient_key(secret, parsed.source_patient_id)
    shift = date_shift_days(secret, parsed.source_patient_id)
    scrubbed = scrub(
        parsed.body,
        patient_names=patient_names,
        identifiers=(parsed.source_patient_id,),
        date_shift_days=shift,
    )
    shifted = (parsed.note_date + timedelta(days=shift)).isoformat() if parsed.note_date else None
    concepts = extract(scrubbed.text)
    log.debug("note processed: %d concepts, scrub counts %s", len(concepts), scrubbed.counts)
    return NoteResult(
        patient_key=key,
        note_id=note_id or note_id_for(source),
        note_date=shifted,
        text=scrubbed.text,
        concepts=concepts,
        decode_replaced=parsed.decode_replaced,
        scrub_counts=scrubbed.counts,
        encoding=parsed.encoding,
    )


def concept_rows(result: NoteResult) -> list[dict[str, Any]]:
    """Return one Parquet-ready row per concept (columns :data:`NOTES_COLUMNS`)."""
    return [
        {"patient_key": result.patient_key, "note_id": result.note_id, **c.as_dict()}
        for c in result.concepts
    ]


def notes_schema() -> pa.Schema:
    """Return the pyarrow schema of :func:`concept_rows` (:data:`catalog.NOTE_CONCEPTS`)."""
    schema: pa.Schema = catalog.arrow_schema(catalog.NOTE_CONCEPTS)
    return schema


def __getattr__(name: str) -> Any:
    # NOTES_SCHEMA stays an attribute without importing pyarrow with this module
    if name == "NOTES_SCHEMA":
        return notes_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
