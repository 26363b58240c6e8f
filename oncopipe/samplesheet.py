"""Sample sheets: nf-core style CSV, validated with errors that name line and column.

Columns (header names are case-insensitive):

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
TYPES = {"tumour": "tumour", "tumor": "tumour", "normal": "normal"}
PLATFORMS = ("ILLUMINA", "ONT", "PACBIO", "ELEMENT", "ULTIMA")
FASTQ_SUFFIXES = (".fastq.gz", ".fq.gz")
SAMPLE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class SampleRow:
    """One validated row. ``patient`` is the source id: PHI, never log it."""

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
    """One problem, located by line (the header is line 1) and column."""

    line: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = ", ".join(
            part
            for part in (
                f"line {self.line}" if self.line is not None else "",
                f"column {self.column}" if self.column else "",
            )
            if part
        )
        return f"{where}: {self.message}" if where else self.message


class SampleSheetError(InputError):
    """The sample sheet is invalid; ``issues`` lists every problem found."""

    reason_code = "invalid-samplesheet"

    def __init__(self, source: str, issues: list[SheetIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        super().__init__(
            source,
            f"{count} problem{'s' if count != 1 else ''} in the sample sheet",
            details=[str(i) for i in self.issues],
        )

    def report(self) -> str:
        """Return the headline and every problem on its own indented line."""
        return "\n".join([str(self), *(f"  {d}" for d in self.details)])


@dataclass(frozen=True)
class SampleSheet:
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
        return list(dict.fromkeys(r.dicom for r in self.rows if r.dicom))


def _decode(data: str | bytes, source: str) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SampleSheetError(
            source, [SheetIssue(None, None, f"not UTF-8 text (byte {e.start} cannot be decoded)")]
        ) from e


def parse_samplesheet(
    data: str | bytes,
    *,
    source: str,
    exists: Callable[[str], bool] | None = None,
    prefix_exists: Callable[[str], bool] | None = None,
) -> SampleSheet:
    """Parse and validate a sample sheet; return it when every row is valid.

    ``exists(key)`` and ``prefix_exists(prefix)`` check that named files and DICOM folders
    are there (the ingest bucket, or a local folder); None skips the check.

    Raises:
        SampleSheetError: with every problem found, each naming its line and column. No
            message contains a patient id.
    """
    text = _decode(data, source)
    issues: list[SheetIssue] = []
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise SampleSheetError(source, [SheetIssue(None, None, "the file is empty")])
    reader = csv.reader(io.StringIO(text))
    header_raw = next(reader)
    header = [h.strip().lower() for h in header_raw]
    allowed = REQUIRED + OPTIONAL
    for column in REQUIRED:
        if column not in header:
            issues.append(SheetIssue(1, column, "required column is missing"))
    for column in header:
        if column not in allowed:
            issues.append(
                SheetIssue(1, column or "(empty)", f"unknown column; allowed: {', '.join(allowed)}")
            )
    duplicates = {c for c in header if header.count(c) > 1}
    for column in sorted(duplicates):
        issues.append(SheetIssue(1, column, "column appears more than once"))
    if issues:
        raise SampleSheetError(source, issues)

    rows: list[SampleRow] = []
    first_line_of_sample: dict[str, int] = {}
    first_line_of_fastq: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if not any(field.strip() for field in record):
            continue
        if len(record) != len(header):
            issues.append(
                SheetIssue(line, None, f"{len(record)} fields, the header has {len(header)}")
            )
            continue
        values = {h: v.strip() for h, v in zip(header, record, strict=True)}
        row_issues = _check_row(values, line, first_line_of_sample, first_line_of_fastq)
        issues.extend(row_issues)
        if exists is not None:
            for column in ("fastq_1", "fastq_2", "notes"):
                key = values.get(column, "")
                if key and not any(i.column == column for i in row_issues) and not exists(key):
                    issues.append(
                        SheetIssue(line, column, f"file {key} does not exist in the ingest bucket")
                    )
        if prefix_exists is not None and values.get("dicom"):
            if not prefix_exists(values["dicom"]):
                issues.append(SheetIssue(line, "dicom", f"no objects under {values['dicom']}"))
        if not row_issues:
            rows.append(_row(values, line))
    if not rows and not issues:
        issues.append(SheetIssue(None, None, "no sample rows after the header"))
    if issues:
        raise SampleSheetError(source, issues)
    return SampleSheet(source=source, rows=tuple(rows))


def _check_row(
    values: dict[str, str],
    line: int,
    first_line_of_sample: dict[str, int],
    first_line_of_fastq: dict[str, int],
) -> list[SheetIssue]:
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
        if not SAMPLE_RE.match(sample):
            issues.append(
                SheetIssue(
                    line,
                    "sample",
                    "sample ids use 1-64 letters, digits, '_', '.', '-', starting with a "
                    "letter or digit",
                )
            )
        elif sample in first_line_of_sample:
            issues.append(
                SheetIssue(
                    line,
                    "sample",
                    f"sample {sample} already appears on line {first_line_of_sample[sample]}",
                )
            )
        else:
            first_line_of_sample[sample] = line
    kind = values.get("type", "")
    if kind and kind.lower() not in TYPES:
        issues.append(
            SheetIssue(line, "type", f"type {kind!r} is not one of tumour, tumor, normal")
        )
    for column in ("fastq_1", "fastq_2"):
        key = values.get(column, "")
        if not key:
            continue
        if not key.lower().endswith(FASTQ_SUFFIXES):
            issues.append(SheetIssue(line, column, f"{key} is not a .fastq.gz or .fq.gz file"))
        elif key in first_line_of_fastq and first_line_of_fastq[key] != line:
            issues.append(
                SheetIssue(
                    line, column, f"{key} is already used on line {first_line_of_fastq[key]}"
                )
            )
        else:
            first_line_of_fastq.setdefault(key, line)
    if values.get("fastq_1") and values.get("fastq_1") == values.get("fastq_2"):
        issues.append(SheetIssue(line, "fastq_2", "fastq_2 is the same file as fastq_1"))
    platform = values.get("platform", "")
    if platform and platform.upper() not in PLATFORMS:
        issues.append(
            SheetIssue(
                line, "platform", f"platform {platform!r} is not one of {', '.join(PLATFORMS)}"
            )
        )
    note_date = values.get("note_date", "")
    if note_date:
        try:
            date.fromisoformat(note_date)
        except ValueError:
            issues.append(SheetIssue(line, "note_date", f"{note_date!r} is not a YYYY-MM-DD date"))
    return issues


def _row(values: dict[str, str], line: int) -> SampleRow:
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
        note_date=date.fromisoformat(values["note_date"]) if values.get("note_date") else None,
    )


def pseudonymised_records(
    sheet: SampleSheet, patient_key: Callable[[str], str], *, run_id: str
) -> list[dict[str, object]]:
    """Return the rows for the curated sample table: the patient id replaced by its key."""
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
