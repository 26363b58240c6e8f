"""Sample sheets: nf-core style CSV, validated with errors that name line and column.

A sample sheet is UTF-8 CSV (a byte-order mark is allowed) with a header row. Columns
(header names are matched case-insensitively, surrounding whitespace ignored):

=============  ========  ===================================================================
column         required  meaning
=============  ========  ===================================================================
patient        yes       source patient id (PHI: never echoed in a message)
sample         yes       sample id, ``[A-Za-z0-9][A-Za-z0-9_.-]*``, unique in the sheet; with
                         ``.<lane>`` it is the read group ID, at most 64 characters
type           yes       ``tumour`` (or ``tumor``) / ``normal``
fastq_1        yes       ingest key of read 1 under ``fastq/``, ``.fastq.gz`` / ``.fq.gz``
fastq_2        yes       ingest key of read 2 under ``fastq/``
lane           no        sequencing lane, a positive integer up to 999 (default ``1``)
library        no        library id, read group LB, ``[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}``
                         (default: the sample)
platform       no        read group PL, a SAM specification value (default ILLUMINA)
dicom          no        ingest prefix of the patient's DICOM series folder, under ``dicom/``
notes          no        ingest key of a clinical note of the patient, under ``notes/``
note_date      no        ISO date (YYYY-MM-DD) of that note
=============  ========  ===================================================================

Any other column is an error (a typo such as ``fastq2`` must not silently drop data).
Values are stripped of surrounding whitespace; fully blank lines are skipped. Every problem
is collected and raised at once as a :class:`SampleSheetError`.

Locations: a key is relative to the ingest bucket and lies under its column's prefix; no
absolute path, no ``.``/``..``/empty segment, no backslash, no control character. An
``s3://`` URI is accepted only for the ingest bucket itself (``ingest_bucket``; when it is
not known, as in the offline check, every URI is refused) and is normalised to its key.

Cells: no cell may hold a control character, nor start with a spreadsheet formula
character (``= + - @``, also after leading spaces, or a tab or carriage return: the
OWASP CSV-injection list, plus their full-width forms), in any column.

Privacy: no message ever contains a value of the ``patient`` column. Values of other
columns are echoed (file keys, sample ids), except where they contain a patient id of the
sheet, which is then shown as ``<patient id>``. Sample and library ids travel into the
de-identified zone, so they must not contain a patient id of the sheet in any spelling:
both are compared on their upper-cased letters and digits (``MRN6433012T`` contains
``MRN-6433012``), in both directions, when the shorter of the two has at least
:data:`MIN_ID_OVERLAP` of them (so that a one-character id does not refuse every sample);
the patient id's number alone (at least :data:`MIN_ID_DIGITS` digits) counts too.
The refusal names neither value.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from oncopipe import layout
from oncopipe.errors import InputError

REQUIRED = ("patient", "sample", "type", "fastq_1", "fastq_2")
OPTIONAL = ("lane", "library", "platform", "dicom", "notes", "note_date")
ALLOWED = REQUIRED + OPTIONAL
TYPES = {"tumour": "tumour", "tumor": "tumour", "normal": "normal"}
#: Read group PL values of the SAM specification (v1, section 1.3, @RG PL).
PLATFORMS = (
    "ILLUMINA", "CAPILLARY", "DNBSEQ", "ELEMENT", "HELICOS", "IONTORRENT",
    "LS454", "ONT", "PACBIO", "SINGULAR", "SOLID", "ULTIMA",
)  # fmt: skip
FASTQ_SUFFIXES = (".fastq.gz", ".fq.gz")
#: The aligner's read-group value rule (``oncopipe.genomics.align``): ``ID`` is
#: ``<sample>.<lane>`` and ``LB`` the library, each at most this long.
READ_GROUP_MAX = 64
SAMPLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LIBRARY_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{READ_GROUP_MAX - 1}}}")
LANE_RE = re.compile(r"[0-9]{1,3}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# s3://bucket/key; bucket names per the S3 naming rules (3-63 lower-case characters).
S3_URI_RE = re.compile(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(\S.*)")
#: The ingest prefix each location column must lie under (``oncopipe.layout``).
LOCATION_PREFIXES = {
    "fastq_1": layout.INGEST_FASTQ,
    "fastq_2": layout.INGEST_FASTQ,
    "notes": layout.INGEST_NOTES,
    "dicom": layout.INGEST_DICOM,
}
#: OWASP CSV injection: cells starting with these run as formulas in spreadsheets.
FORMULA_PREFIXES = frozenset("=+-@\uff1d\uff0b\uff0d\uff20")
FORMULA_RAW_PREFIXES = frozenset("\t\r")
#: Shortest normalised id fragment the patient-id-in-sample check compares (see above).
MIN_ID_OVERLAP = 4
#: Fewest digits for a patient id's number to be compared on its own (MRNs have 6-10).
MIN_ID_DIGITS = 6
REDACTED = "<patient id>"


@dataclass(frozen=True)
class SampleRow:
    """One validated row. ``patient`` is the source id: PHI, never log it.

    ``line`` is the 1-based line of the row in the file (the header is line 1). The
    locations (``fastq_1``, ``fastq_2``, ``dicom``, ``notes``) are keys in the ingest bucket
    (an ``s3://`` URI of the sheet is given here as its key): PHI too, as exports name
    files after patients.
    """

    line: int
    patient: str
    sample: str
    type: str
    fastq_1: str
    fastq_2: str
    lane: str
    library: str
    platform: str
    dicom: str | None
    notes: str | None
    note_date: date | None


@dataclass(frozen=True)
class SheetIssue:
    """One problem, located by line (the header is line 1) and column where known."""

    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        """Return ``line L, column C: message``, leaving out the parts that are None."""
        parts = []
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.column:
            parts.append(f"column {self.column}")
        where = ", ".join(parts)
        return f"{where}: {self.message}" if where else self.message


class SampleSheetError(InputError):
    """The sample sheet is invalid; ``issues`` lists every problem found.

    ``str(err)`` is ``<source>: <n> problem(s) in the sample sheet``; ``details`` holds one
    string per issue. No part of it contains a patient id.
    """

    reason_code = "invalid-samplesheet"

    def __init__(self, source: str, issues: list[SheetIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        super().__init__(
            source,
            f"{count} problem{'' if count == 1 else 's'} in the sample sheet",
            details=[str(i) for i in self.issues],
        )

    def report(self) -> str:
        """Return the headline and every problem on its own indented line."""
        return "\n".join([str(self), *(f"  {d}" for d in self.details)])


@dataclass(frozen=True)
class SampleSheet:
    """A validated sample sheet: where it came from and its rows in file order."""

    source: str
    rows: tuple[SampleRow, ...]

    def patients(self) -> list[str]:
        """Return the source patient ids (PHI), sorted and unique."""
        return sorted({r.patient for r in self.rows})

    def referenced_keys(self) -> list[str]:
        """Return the FASTQ and note keys the sheet names, in row order, once each."""
        keys: dict[str, None] = {}
        for row in self.rows:
            for value in (row.fastq_1, row.fastq_2, row.notes):
                if value:
                    keys[value] = None
        return list(keys)

    def dicom_prefixes(self) -> list[str]:
        """Return the DICOM prefixes the sheet names, in row order, once each."""
        return list(dict.fromkeys(r.dicom for r in self.rows if r.dicom))


class _Redactor:
    """Hides the sheet's patient ids inside values that a message echoes."""

    def __init__(self, patients: set[str]) -> None:
        # Longest first, so that an id containing another is hidden whole.
        ids = sorted((p for p in patients if p), key=len, reverse=True)
        self._pattern = (
            re.compile(
                r"(?<![A-Za-z0-9])(?:" + "|".join(map(re.escape, ids)) + r")(?![A-Za-z0-9])",
                re.IGNORECASE,
            )
            if ids
            else None
        )

        self._normalised: set[str] = set()
        for patient in patients:
            normalised = _normalise_id(patient)
            digits = "".join(c for c in normalised if c.isdigit())
            self._normalised.add(normalised)
            # The number alone identifies the patient where the letters are a constant
            # prefix (MRN-, PT): compared when long enough to be an identifier.
            if len(digits) >= MIN_ID_DIGITS and digits != normalised:
                self._normalised.add(digits)
        self._normalised.discard("")

    def contains_patient(self, value: str) -> bool:
        """Return True when ``value`` contains a patient id of the sheet as a whole token."""
        return self._pattern is not None and self._pattern.search(value) is not None

    def overlaps_patient(self, value: str) -> bool:
        """Return True when ``value`` and a patient id of the sheet contain one another.

        Both are compared as upper-cased letters and digits, so ``MRN6433012T`` overlaps
        ``MRN-6433012`` and ``433012`` does too; the patient id's digits alone (when there
        are at least :data:`MIN_ID_DIGITS`) are compared as well, so ``X6433012N`` overlaps
        it. Pairs whose shorter side has fewer than :data:`MIN_ID_OVERLAP` characters are
        not compared.
        """
        mine = _normalise_id(value)
        for patient in self._normalised:
            shorter = min(len(mine), len(patient))
            if shorter >= MIN_ID_OVERLAP and (patient in mine or mine in patient):
                return True
        return False

    def __call__(self, value: str) -> str:
        return self._pattern.sub(REDACTED, value) if self._pattern else value


def _normalise_id(value: str) -> str:
    """Return the upper-cased letters and digits of an id (how ids are compared)."""
    return "".join(c for c in value.upper() if c.isalnum())


def _cell_issues(header: list[str], record: list[str], line: int) -> list[SheetIssue]:
    """Return the control-character and formula-prefix problems of a row's raw cells.

    The value is never echoed: it may be a patient id.
    """
    issues = []
    for column, raw in zip(header, record, strict=True):
        if any(unicodedata.category(c) == "Cc" for c in raw.strip(" \t\r\n")):
            issues.append(SheetIssue(line, column, "the value contains a control character"))
        elif (raw[:1] in FORMULA_RAW_PREFIXES and raw.strip()) or (
            raw.lstrip()[:1] in FORMULA_PREFIXES
        ):
            issues.append(
                SheetIssue(
                    line,
                    column,
                    "the value starts with a spreadsheet formula character (= + - @, or a "
                    "tab or carriage return); remove it",
                )
            )
    return issues


def _decode(data: str | bytes, source: str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SampleSheetError(
            source, [SheetIssue(None, None, f"not UTF-8 text (byte {e.start} cannot be decoded)")]
        ) from e


def _read_records(text: str, source: str) -> list[tuple[int, list[str]]]:
    """Return the non-blank records with the line each starts on (quoted fields may span)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    last_line = 0
    try:
        for record in reader:
            start, last_line = last_line + 1, reader.line_num
            if any(field.strip() for field in record):
                records.append((start, record))
    except csv.Error as e:
        # csv messages name the problem (NUL byte, unterminated quote), never a value.
        raise SampleSheetError(
            source, [SheetIssue(reader.line_num or None, None, f"not readable as CSV: {e}")]
        ) from e
    return records


def _check_header(header: list[str], raw: list[str], line: int) -> list[SheetIssue]:
    issues = [
        SheetIssue(line, column, "required column is missing")
        for column in REQUIRED
        if column not in header
    ]
    allowed = ", ".join(ALLOWED)
    if not any(column in ALLOWED for column in header):
        # Probably a data row where the header should be: its cells may be patient ids.
        issues.append(
            SheetIssue(
                line,
                None,
                f"the header row names no known column (is it missing?); allowed: {allowed}",
            )
        )
        return issues
    for column, name in zip(header, raw, strict=True):
        if column not in ALLOWED:
            shown = name.strip() or "(empty)"
            issues.append(SheetIssue(line, shown, f"unknown column; allowed: {allowed}"))
    for column in sorted({c for c in header if c in ALLOWED and header.count(c) > 1}):
        issues.append(SheetIssue(line, column, "column appears more than once"))
    return issues


def parse_samplesheet(
    data: str | bytes,
    *,
    source: str,
    exists: Callable[[str], bool] | None = None,
    prefix_exists: Callable[[str], bool] | None = None,
    ingest_bucket: str | None = None,
) -> SampleSheet:
    """Parse and validate a sample sheet.

    Args:
        data: the file's content (bytes must be UTF-8; a byte-order mark is allowed).
        source: the sheet's object key or path, used in messages.
        exists: called with the ingest key of each ``fastq_1``, ``fastq_2`` and ``notes``
            value (an ``s3://`` URI is passed as its key); False reports a missing file.
            None skips.
        prefix_exists: called with each ``dicom`` key; False reports an empty prefix.
            None skips. Each distinct value is checked once.
        ingest_bucket: the ingest bucket's name, the only bucket an ``s3://`` URI may
            name. None (not known, e.g. offline) refuses every ``s3://`` URI.

    Returns:
        The sheet with one :class:`SampleRow` per data row, in file order.

    Raises:
        SampleSheetError: with every problem found, each naming its line and column. No
            message contains a patient id.
    """
    text = _decode(data, source)
    records = _read_records(text, source)
    if not records:
        raise SampleSheetError(source, [SheetIssue(None, None, "the file is empty")])
    (header_line, raw_header), body = records[0], records[1:]
    header = [h.strip().lower() for h in raw_header]
    issues = _check_header(header, raw_header, header_line)
    if issues:
        raise SampleSheetError(source, issues)
    if not body:
        raise SampleSheetError(source, [SheetIssue(None, None, "no sample rows after the header")])

    patient_at = header.index("patient")
    redact = _Redactor({r[patient_at].strip() for _, r in body if len(r) > patient_at})
    exists_cache: dict[str, bool] = {}
    prefix_cache: dict[str, bool] = {}
    first_line_of_sample: dict[str, int] = {}  # (sample, lane) -> line
    identity: dict[str, tuple[str, str, int]] = {}  # sample -> (patient, type, line)
    first_line_of_fastq: dict[str, int] = {}
    rows: list[SampleRow] = []
    for line, record in body:
        # Spreadsheet exports pad rows with empty trailing fields: harmless, so allowed.
        while len(record) > len(header) and not record[-1].strip():
            record = record[:-1]
        if len(record) != len(header):
            issues.append(
                SheetIssue(line, None, f"{len(record)} fields, the header has {len(header)}")
            )
            continue
        cell_issues = _cell_issues(header, record, line)
        values = {h: v.strip() for h, v in zip(header, record, strict=True)}
        bad_cells = {i.column for i in cell_issues}
        row_issues = cell_issues + [
            i
            for i in _check_row(
                values,
                line,
                redact,
                first_line_of_sample,
                first_line_of_fastq,
                identity,
                ingest_bucket,
            )
            if i.column not in bad_cells
        ]
        issues.extend(row_issues)
        flagged = {i.column for i in row_issues}
        for column in LOCATION_PREFIXES:
            if values.get(column) and column not in flagged:
                values[column] = _as_key(values[column])
        if exists is not None:
            for column in ("fastq_1", "fastq_2", "notes"):
                key = values.get(column, "")
                if not key or column in flagged:
                    continue
                if key not in exists_cache:
                    exists_cache[key] = exists(key)
                if not exists_cache[key]:
                    issues.append(
                        SheetIssue(
                            line,
                            column,
                            f"file {redact(key)} does not exist in the ingest bucket",
                        )
                    )
        prefix = values.get("dicom", "")
        if prefix_exists is not None and prefix and "dicom" not in flagged:
            if prefix not in prefix_cache:
                prefix_cache[prefix] = prefix_exists(prefix)
            if not prefix_cache[prefix]:
                issues.append(SheetIssue(line, "dicom", f"no objects under {redact(prefix)}"))
        if not row_issues:
            rows.append(_row(values, line))
    if issues:
        raise SampleSheetError(source, issues)
    return SampleSheet(source=source, rows=tuple(rows))


def _as_key(value: str) -> str:
    """Return the ingest key of a validated location (an ``s3://`` URI loses its bucket)."""
    match = S3_URI_RE.fullmatch(value)
    return match.group(2) if match else value


def _check_location(
    column: str, value: str, line: int, shown: str, ingest_bucket: str | None
) -> SheetIssue | None:
    """Return an issue when ``value`` is not a safe ingest key under its column's prefix.

    ``value`` is a key or an ``s3://`` URI of the ingest bucket; the key must lie under
    :data:`LOCATION_PREFIXES` ``[column]`` with no absolute path, backslash or ``.``,
    ``..`` or empty segment (``dicom`` may end with ``/``). The problem is described,
    the value is echoed only as ``shown`` (patient ids redacted) where harmless.
    """
    key = value
    if value[:5].lower() == "s3://":
        match = S3_URI_RE.fullmatch(value)
        if not match:
            return SheetIssue(line, column, f"{shown} is not an s3://bucket/key URI")
        if ingest_bucket is None:
            return SheetIssue(
                line,
                column,
                "s3:// URIs are accepted only for the ingest bucket, which is not known "
                "here: give the key in the ingest bucket instead",
            )
        if match.group(1) != ingest_bucket:
            return SheetIssue(
                line,
                column,
                "the s3:// URI names another bucket than the ingest bucket; upload the file "
                "to the ingest bucket and give its key",
            )
        key = match.group(2)
    elif "://" in value:
        return SheetIssue(
            line, column, f"{shown}: give a key in the ingest bucket or an s3://bucket/key URI"
        )
    prefix = LOCATION_PREFIXES[column]
    if key.startswith("/"):
        return SheetIssue(line, column, f"an absolute path; give a key under {prefix}")
    if "\\" in key:
        return SheetIssue(line, column, "a backslash in the key; S3 keys separate with '/'")
    segments = (key[:-1] if column == "dicom" and key.endswith("/") else key).split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return SheetIssue(
            line, column, "the key has an empty, '.' or '..' segment; give a plain key"
        )
    if not key.startswith(prefix) or len(key) == len(prefix):
        return SheetIssue(line, column, f"the key must lie under {prefix} in the ingest bucket")
    return None


def _check_row(
    values: dict[str, str],
    line: int,
    redact: _Redactor,
    first_line_of_sample: dict[str, int],
    first_line_of_fastq: dict[str, int],
    identity: dict[str, tuple[str, str, int]],
    ingest_bucket: str | None,
) -> list[SheetIssue]:
    """Return the problems of one row; record its sample and FASTQ keys for later rows."""
    issues: list[SheetIssue] = []
    for column in REQUIRED:
        if not values.get(column):
            what = (
                "patient is empty: every row needs the source patient id"
                if column == "patient"
                else f"{column} is empty"
            )
            issues.append(SheetIssue(line, column, what))

    lane = values.get("lane", "")
    lane_ok = not lane or (LANE_RE.fullmatch(lane) is not None and int(lane) > 0)
    if not lane_ok:
        issues.append(SheetIssue(line, "lane", "the lane is not a whole number between 1 and 999"))
    lane = str(int(lane)) if lane and lane_ok else "1"
    sample = values.get("sample", "")
    if sample:
        longest = READ_GROUP_MAX - 1 - len(lane)  # the read group ID is <sample>.<lane>
        if redact.contains_patient(sample) or redact.overlaps_patient(sample):
            issues.append(
                SheetIssue(
                    line,
                    "sample",
                    "sample id contains a patient id; sample ids reach the de-identified "
                    "zone, so choose one without it",
                )
            )
        elif not SAMPLE_RE.fullmatch(sample):
            issues.append(
                SheetIssue(
                    line,
                    "sample",
                    f"sample ids use 1-{READ_GROUP_MAX - 2} letters, digits, '_', '.', '-', "
                    "starting with a letter or digit",
                )
            )
        elif len(sample) > longest:
            issues.append(
                SheetIssue(
                    line,
                    "sample",
                    f"the sample id has {len(sample)} characters: with its lane it makes the "
                    f"read group ID '<sample>.{lane}', which the aligner limits to "
                    f"{READ_GROUP_MAX}, so use at most {longest}",
                )
            )
        else:
            # One row per lane: a sample may span rows, a (sample, lane) pair may not.
            key = f"{sample}\x00{lane}"
            if key in first_line_of_sample:
                issues.append(
                    SheetIssue(
                        line,
                        "sample",
                        f"sample {redact(sample)} already appears on line "
                        f"{first_line_of_sample[key]}"
                        + (f" with lane {lane}" if "lane" in values else ""),
                    )
                )
            else:
                first_line_of_sample[key] = line
            patient, kind = values.get("patient", ""), (values.get("type") or "").lower()
            kind = TYPES.get(kind, kind)
            if sample in identity:
                first_patient, first_kind, first_line = identity[sample]
                shown = redact(sample)
                if patient and first_patient and patient != first_patient:
                    message = f"sample {shown} has another patient than on line {first_line}"
                    issues.append(SheetIssue(line, "patient", message))
                if kind and first_kind and kind != first_kind:
                    message = f"sample {shown} is {kind} here but {first_kind} on line {first_line}"
                    issues.append(SheetIssue(line, "type", message))
            else:
                identity[sample] = (patient, kind, line)

    library = values.get("library", "")
    if library and (redact.contains_patient(library) or redact.overlaps_patient(library)):
        issues.append(
            SheetIssue(
                line,
                "library",
                "library id contains a patient id; it reaches the de-identified zone",
            )
        )
    elif library and not LIBRARY_RE.fullmatch(library):
        issues.append(
            SheetIssue(
                line,
                "library",
                f"library ids (read group LB) use 1-{READ_GROUP_MAX} letters, digits, '_', "
                "'.', ':', '-', starting with a letter or digit",
            )
        )

    kind = values.get("type", "")
    if kind and kind.lower() not in TYPES:
        issues.append(
            SheetIssue(line, "type", f"type {redact(kind)!r} is not one of tumour, tumor, normal")
        )

    for column in ("fastq_1", "fastq_2"):
        key = values.get(column, "")
        if not key:
            continue
        shown = redact(key)
        bad_location = _check_location(column, key, line, shown, ingest_bucket)
        plain = _as_key(key)
        if bad_location is not None:
            issues.append(bad_location)
        elif not key.lower().endswith(FASTQ_SUFFIXES):
            issues.append(SheetIssue(line, column, f"{shown} is not a .fastq.gz or .fq.gz file"))
        elif plain in first_line_of_fastq and first_line_of_fastq[plain] != line:
            issues.append(
                SheetIssue(
                    line, column, f"{shown} is already used on line {first_line_of_fastq[plain]}"
                )
            )
        else:
            first_line_of_fastq.setdefault(plain, line)
    fastq_1, fastq_2 = values.get("fastq_1", ""), values.get("fastq_2", "")
    if fastq_1 and _as_key(fastq_1) == _as_key(fastq_2):
        issues.append(SheetIssue(line, "fastq_2", "fastq_2 is the same file as fastq_1"))

    for column in ("dicom", "notes"):
        value = values.get(column, "")
        if value:
            bad_location = _check_location(column, value, line, redact(value), ingest_bucket)
            if bad_location is not None:
                issues.append(bad_location)

    platform = values.get("platform", "")
    if platform and platform.upper() not in PLATFORMS:
        issues.append(
            SheetIssue(
                line,
                "platform",
                f"platform {redact(platform)!r} is not one of {', '.join(PLATFORMS)}",
            )
        )

    note_date = values.get("note_date", "")
    if note_date and _parse_date(note_date) is None:
        issues.append(
            SheetIssue(line, "note_date", f"{redact(note_date)!r} is not a YYYY-MM-DD date")
        )
    return issues


def _parse_date(value: str) -> date | None:
    """Return the date of a strict ``YYYY-MM-DD`` string, or None when it is not one."""
    if not DATE_RE.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _row(values: dict[str, str], line: int) -> SampleRow:
    note_date = values.get("note_date", "")
    return SampleRow(
        line=line,
        patient=values["patient"],
        sample=values["sample"],
        type=TYPES[values["type"].lower()],
        fastq_1=values["fastq_1"],
        fastq_2=values["fastq_2"],
        lane=str(int(values["lane"])) if values.get("lane") else "1",
        library=values.get("library") or values["sample"],
        platform=(values.get("platform") or "ILLUMINA").upper(),
        dicom=values.get("dicom") or None,
        notes=values.get("notes") or None,
        note_date=_parse_date(note_date) if note_date else None,
    )


def pseudonymised_records(
    sheet: SampleSheet,
    secret: bytes,
    *,
    run_id: str,
    patient_key: Callable[[str], str] | None = None,
) -> list[dict[str, object]]:
    """Return the rows for the curated (de-identified) sample table, in file order.

    Each dict holds ``patient_key`` in place of the source patient id; ``sample``,
    ``type``, ``lane``, ``library``, ``platform``; ``note_date`` shifted by the patient's
    date shift (the one DICOM de-identification and the notes stage apply, so the shift
    cannot be read off by comparing the two) as an ISO string or None; the locations only
    as opaque references (``fastq_1_ref``, ``fastq_2_ref``, ``dicom_ref``, ``notes_ref``,
    ``samplesheet_ref``: :func:`oncopipe.pseudonym.object_ref` of the ingest key, or None);
    ``source_line`` and ``run_id``. No value is an ingest key, a source id or an unshifted
    date.

    Args:
        patient_key: the key function to use (a memoised :func:`oncopipe.pseudonym.keyer`);
            default: :func:`oncopipe.pseudonym.patient_key` with ``secret``.

    Raises:
        ValueError: an id the key function refuses (empty after stripping), or a secret
            shorter than 32 bytes. The message names neither.
    """
    from oncopipe.pseudonym import date_shift_days, keyer, object_ref

    key_of = patient_key or keyer(secret)

    def ref(value: str | None) -> str | None:
        return object_ref(secret, value) if value else None

    records: list[dict[str, object]] = []
    for row in sheet.rows:
        shifted = (
            (row.note_date + timedelta(days=date_shift_days(secret, row.patient))).isoformat()
            if row.note_date
            else None
        )
        records.append(
            {
                "patient_key": key_of(row.patient),
                "sample": row.sample,
                "type": row.type,
                "lane": row.lane,
                "library": row.library,
                "platform": row.platform,
                "note_date": shifted,
                "fastq_1_ref": ref(row.fastq_1),
                "fastq_2_ref": ref(row.fastq_2),
                "dicom_ref": ref(row.dicom),
                "notes_ref": ref(row.notes),
                "samplesheet_ref": ref(sheet.source),
                "source_line": row.line,
                "run_id": run_id,
            }
        )
    return records


def stage_records(
    sheet: SampleSheet, patient_key: Callable[[str], str], *, run_id: str
) -> list[dict[str, object]]:
    """Return the rows the stages work from (PHI: they are kept in the PHI zone only).

    Each dict has ``patient_key``, ``source_patient_id`` (the notes stage derives a note's
    key and date shift from it when the note names no patient), ``sample``, ``type``,
    ``lane``, ``library``, ``platform``, the ingest keys ``fastq_1``, ``fastq_2``,
    ``dicom``, ``notes`` (None when absent), the unshifted ``note_date`` (ISO or None),
    ``source_line``, ``samplesheet`` (the sheet's key) and ``run_id``.

    Raises:
        Whatever ``patient_key`` raises (ValueError for an empty id).
    """
    return [
        {
            "patient_key": patient_key(row.patient),
            "source_patient_id": row.patient,
            "sample": row.sample,
            "type": row.type,
            "lane": row.lane,
            "library": row.library,
            "platform": row.platform,
            "fastq_1": row.fastq_1,
            "fastq_2": row.fastq_2,
            "dicom": row.dicom,
            "notes": row.notes,
            "note_date": row.note_date.isoformat() if row.note_date else None,
            "source_line": row.line,
            "samplesheet": sheet.source,
            "run_id": run_id,
        }
        for row in sheet.rows
    ]
