"""Sample sheets: nf-core style CSV, validated with errors that name line and column.

A sample sheet is UTF-8 CSV (a byte-order mark is allowed) with a header row. Columns
(header names are matched case-insensitively, surrounding whitespace ignored):

=============  ========  ===================================================================
column         required  meaning
=============  ========  ===================================================================
patient        yes       source patient id (PHI: never echoed in a message)
sample         yes       sample id, ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``, unique in the sheet
type           yes       ``tumour`` (or ``tumor``) / ``normal``
fastq_1        yes       ingest key (or ``s3://`` URI) of read 1, ``.fastq.gz`` / ``.fq.gz``
fastq_2        yes       ingest key of read 2
lane           no        sequencing lane (default ``1``)
library        no        library id, read group LB (default: the sample)
platform       no        read group PL: ILLUMINA (default), ONT, PACBIO, ELEMENT, ULTIMA
dicom          no        ingest prefix of the patient's DICOM series folder
notes          no        ingest key of a clinical note of the patient
note_date      no        ISO date (YYYY-MM-DD) of that note
=============  ========  ===================================================================

Any other column is an error (a typo such as ``fastq2`` must not silently drop data).
Values are stripped of surrounding whitespace; fully blank lines are skipped. Every problem
is collected and raised at once as a :class:`SampleSheetError`.

Privacy: no message ever contains a value of the ``patient`` column. Values of other
columns are echoed (file keys, sample ids), except where they contain a patient id of the
sheet, which is then shown as ``<patient id>``. Sample and library ids travel into the
de-identified zone, so they must not contain a patient id of the sheet.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from oncopipe.errors import InputError

REQUIRED = ("patient", "sample", "type", "fastq_1", "fastq_2")
OPTIONAL = ("lane", "library", "platform", "dicom", "notes", "note_date")
ALLOWED = REQUIRED + OPTIONAL
TYPES = {"tumour": "tumour", "tumor": "tumour", "normal": "normal"}
PLATFORMS = ("ILLUMINA", "ONT", "PACBIO", "ELEMENT", "ULTIMA")
FASTQ_SUFFIXES = (".fastq.gz", ".fq.gz")
SAMPLE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
# s3://bucket/key; bucket names per the S3 naming rules (3-63 lower-case characters).
S3_URI_RE = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/\S.*")
REDACTED = "<patient id>"


@dataclass(frozen=True)
class SampleRow:
    """One validated row. ``patient`` is the source id: PHI, never log it.

    ``line`` is the 1-based line of the row in the file (the header is line 1).
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

    def contains_patient(self, value: str) -> bool:
        """Return True when ``value`` contains a patient id of the sheet as a whole token."""
        return self._pattern is not None and self._pattern.search(value) is not None

    def __call__(self, value: str) -> str:
        return self._pattern.sub(REDACTED, value) if self._pattern else value


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
) -> SampleSheet:
    """Parse and validate a sample sheet.

    Args:
        data: the file's content (bytes must be UTF-8; a byte-order mark is allowed).
        source: the sheet's object key or path, used in messages.
        exists: called with each ``fastq_1``, ``fastq_2`` and ``notes`` value, as written
            in the sheet (key or ``s3://`` URI); False reports a missing file. None skips.
        prefix_exists: called with each ``dicom`` value; False reports an empty prefix.
            None skips. Each distinct value is checked once.

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
        values = {h: v.strip() for h, v in zip(header, record, strict=True)}
        row_issues = _check_row(
            values, line, redact, first_line_of_sample, first_line_of_fastq, identity
        )
        issues.extend(row_issues)
        flagged = {i.column for i in row_issues}
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


def _check_location(column: str, value: str, line: int, shown: str) -> SheetIssue | None:
    """Return an issue when ``value`` is neither an ingest key nor an s3://bucket/key URI."""
    if value.lower().startswith("s3://"):
        if not S3_URI_RE.fullmatch(value):
            return SheetIssue(line, column, f"{shown} is not an s3://bucket/key URI")
    elif "://" in value:
        return SheetIssue(
            line, column, f"{shown}: give a key in the ingest bucket or an s3://bucket/key URI"
        )
    return None


def _check_row(
    values: dict[str, str],
    line: int,
    redact: _Redactor,
    first_line_of_sample: dict[str, int],
    first_line_of_fastq: dict[str, int],
    identity: dict[str, tuple[str, str, int]],
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

    sample = values.get("sample", "")
    if sample:
        if redact.contains_patient(sample):
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
                    "sample ids use 1-64 letters, digits, '_', '.', '-', starting with a "
                    "letter or digit",
                )
            )
        else:
            # One row per lane: a sample may span rows, a (sample, lane) pair may not.
            lane = values.get("lane") or "1"
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
    if library and redact.contains_patient(library):
        issues.append(
            SheetIssue(
                line,
                "library",
                "library id contains a patient id; it reaches the de-identified zone",
            )
        )

    for column in ("fastq_1", "fastq_2", "notes", "dicom"):
        if values.get(column) and redact.contains_patient(values[column]):
            issues.append(
                SheetIssue(
                    line,
                    column,
                    f"{redact(values[column])} names the patient id; keys are recorded in the "
                    "de-identified zone, so rename the file without it",
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
        bad_location = _check_location(column, key, line, shown)
        if bad_location is not None:
            issues.append(bad_location)
        elif not key.lower().endswith(FASTQ_SUFFIXES):
            issues.append(SheetIssue(line, column, f"{shown} is not a .fastq.gz or .fq.gz file"))
        elif key in first_line_of_fastq and first_line_of_fastq[key] != line:
            issues.append(
                SheetIssue(
                    line, column, f"{shown} is already used on line {first_line_of_fastq[key]}"
                )
            )
        else:
            first_line_of_fastq.setdefault(key, line)
    if values.get("fastq_1") and values.get("fastq_1") == values.get("fastq_2"):
        issues.append(SheetIssue(line, "fastq_2", "fastq_2 is the same file as fastq_1"))

    for column in ("dicom", "notes"):
        value = values.get(column, "")
        if value:
            bad_location = _check_location(column, value, line, redact(value))
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
        lane=values.get("lane") or "1",
        library=values.get("library") or values["sample"],
        platform=(values.get("platform") or "ILLUMINA").upper(),
        dicom=values.get("dicom") or None,
        notes=values.get("notes") or None,
        note_date=_parse_date(note_date) if note_date else None,
    )


def pseudonymised_records(
    sheet: SampleSheet, patient_key: Callable[[str], str], *, run_id: str
) -> list[dict[str, object]]:
    """Return the rows for the curated sample table, one dict per row in file order.

    Each dict has ``patient_key`` (``patient_key(row.patient)``) in place of the source
    patient id, which it never contains, plus the row's other values, ``note_date`` as an
    ISO string or None, ``source_line``, ``samplesheet`` (the sheet's source) and ``run_id``.

    Raises:
        Whatever ``patient_key`` raises (the pseudonym function raises ValueError for an
        empty id).
    """
    return [
        {
            "patient_key": patient_key(row.patient),
            "sample": row.sample,
            "type": row.type,
            "fastq_1": row.fastq_1,
            "fastq_2": row.fastq_2,
            "lane": row.lane,
            "library": row.library,
            "platform": row.platform,
            "dicom": row.dicom,
            "notes": row.notes,
            "note_date": row.note_date.isoformat() if row.note_date else None,
            "source_line": row.line,
            "samplesheet": sheet.source,
            "run_id": run_id,
        }
        for row in sheet.rows
    ]
