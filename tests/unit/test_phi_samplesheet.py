"""The sample sheet refuses what would carry PHI into curated or break a stage later.

Each class of problem is tried in several spellings; every refusal names line and column
and echoes neither the patient id nor the offending value.
"""

from __future__ import annotations

import pytest

from oncopipe.genomics.align import ReadGroup
from oncopipe.samplesheet import (
    ALLOWED,
    MIN_ID_OVERLAP,
    PLATFORMS,
    SampleSheet,
    SampleSheetError,
    parse_samplesheet,
)

MRN = "MRN-6433012"
HEADER = ",".join(ALLOWED)
GOOD = {
    "patient": MRN,
    "sample": "S1",
    "type": "tumour",
    "fastq_1": "fastq/a_R1.fastq.gz",
    "fastq_2": "fastq/a_R2.fastq.gz",
    "lane": "1",
    "library": "LIB1",
    "platform": "ILLUMINA",
    "dicom": "dicom/p1/",
    "notes": "notes/p1.txt",
    "note_date": "2026-03-01",
}


def _csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\r\n') else value


def sheet_with(ingest_bucket: str | None = None, **changes: str) -> SampleSheet:
    values = {**GOOD, **changes}
    text = HEADER + "\n" + ",".join(_csv_cell(values[c]) for c in ALLOWED) + "\n"
    return parse_samplesheet(text, source="samplesheets/s.csv", ingest_bucket=ingest_bucket)


def refused(column: str, value: str, *, ingest_bucket: str | None = None) -> list[str]:
    """Return the issues of a sheet whose ``column`` is ``value``; check no patient id leaks."""
    with pytest.raises(SampleSheetError) as err:
        sheet_with(ingest_bucket, **{column: value})
    report = err.value.report()
    assert "6433012" not in report  # the patient id in no spelling
    assert all(d.startswith(f"line 2, column {column}:") for d in err.value.details), report
    return err.value.details


def test_the_good_row_is_accepted() -> None:
    (row,) = sheet_with().rows
    assert (row.sample, row.lane, row.library, row.platform) == ("S1", "1", "LIB1", "ILLUMINA")


# -- the patient id inside a sample or library id, in any spelling -------------------------


@pytest.mark.parametrize(
    "sample",
    ["MRN6433012T", "mrn-6433012-T", "T_MRN.6433012", "6433012", "mrn6433012", "X6433012N"],
)
def test_a_sample_id_containing_the_patient_id_is_refused(sample: str) -> None:
    assert refused("sample", sample) == [
        "line 2, column sample: sample id contains a patient id; sample ids reach the "
        "de-identified zone, so choose one without it"
    ]


@pytest.mark.parametrize("library", ["LIB-MRN6433012", "6433012.lib", "mrn_6433012"])
def test_a_library_id_containing_the_patient_id_is_refused(library: str) -> None:
    (issue,) = refused("library", library)
    assert "library id contains a patient id" in issue


def test_the_sample_inside_the_patient_id_is_refused_too() -> None:
    """``MRN-6433012`` with sample ``433012``: the sample id reveals most of the MRN."""
    assert "contains a patient id" in refused("sample", "433012")[0]


def test_short_ids_do_not_refuse_everything() -> None:
    short = "7" * (MIN_ID_OVERLAP - 1)
    (row,) = sheet_with(patient=short, sample=f"S{short}T").rows
    assert row.sample == f"S{short}T"
    (row,) = sheet_with(sample="T1").rows  # "T1" is not compared with "MRN6433012"
    assert row.sample == "T1"


# -- spreadsheet formulas and control characters, in every column ---------------------------


@pytest.mark.parametrize("column", ALLOWED)
@pytest.mark.parametrize(
    "value",
    ["=1+2", "+1", "-1", "@SUM(A1)", "  =HYPERLINK(x)", "\t=1", "\tX9", "\r=1", "\uff1d1"],
)
def test_formula_prefixes_are_refused_in_every_column(column: str, value: str) -> None:
    details = refused(column, value)
    assert details == [
        f"line 2, column {column}: the value starts with a spreadsheet formula character "
        "(= + - @, or a tab or carriage return); remove it"
    ]


@pytest.mark.parametrize("column", ALLOWED)
def test_control_characters_are_refused_in_every_column(column: str) -> None:
    value = GOOD[column][:3] + "\x1b[2J" + GOOD[column][3:]
    assert refused(column, value) == [
        f"line 2, column {column}: the value contains a control character"
    ]


# -- locations: relative keys under the column's prefix, ingest bucket only ----------------


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("fastq_1", "../fastq/a_R1.fastq.gz", "an empty, '.' or '..' segment"),
        ("fastq_1", "fastq/../../etc/a_R1.fastq.gz", "an empty, '.' or '..' segment"),
        ("fastq_1", "fastq/./a_R1.fastq.gz", "an empty, '.' or '..' segment"),
        ("fastq_1", "fastq//a_R1.fastq.gz", "an empty, '.' or '..' segment"),
        ("fastq_1", "/fastq/a_R1.fastq.gz", "an absolute path"),
        ("fastq_1", "fastq\\a_R1.fastq.gz", "a backslash"),
        ("fastq_1", "a_R1.fastq.gz", "must lie under fastq/"),
        ("fastq_1", "notes/a_R1.fastq.gz", "must lie under fastq/"),
        ("fastq_1", "FASTQ/a_R1.fastq.gz", "must lie under fastq/"),
        ("fastq_2", "dicom/a_R2.fastq.gz", "must lie under fastq/"),
        ("notes", "fastq/p1.txt", "must lie under notes/"),
        ("notes", "notes/../fastq/p1.txt", "an empty, '.' or '..' segment"),
        ("notes", "notes/", "an empty, '.' or '..' segment"),
        ("dicom", "dicom/../notes/", "an empty, '.' or '..' segment"),
        ("dicom", "/dicom/p1/", "an absolute path"),
        ("dicom", "p1/", "must lie under dicom/"),
        ("fastq_1", "s3://other-bucket/fastq/a_R1.fastq.gz", "another bucket than the ingest"),
        ("notes", "s3://other-bucket/notes/p1.txt", "another bucket than the ingest"),
        ("fastq_1", "s3://ingest-b/../fastq/a_R1.fastq.gz", "an empty, '.' or '..' segment"),
        ("fastq_1", "s3://ingest-b/a_R1.fastq.gz", "must lie under fastq/"),
        ("fastq_1", "file:///fastq/a_R1.fastq.gz", "give a key in the ingest bucket"),
    ],
)
def test_locations_outside_their_prefix_or_bucket_are_refused(
    column: str, value: str, message: str
) -> None:
    (issue,) = refused(column, value, ingest_bucket="ingest-b")
    assert message in issue, issue


def test_s3_uris_are_accepted_for_the_ingest_bucket_only_and_become_keys() -> None:
    uri = "s3://ingest-b/fastq/run 1/a_R1.fastq.gz"
    (row,) = sheet_with("ingest-b", fastq_1=uri, notes="s3://ingest-b/notes/p1.txt").rows
    assert (row.fastq_1, row.notes) == ("fastq/run 1/a_R1.fastq.gz", "notes/p1.txt")
    # Unknown ingest bucket (the offline check): every URI is refused.
    (issue,) = refused("fastq_1", uri)
    assert "accepted only for the ingest bucket" in issue
    # The same file once as a URI and once as a key is one file.
    with pytest.raises(SampleSheetError, match="1 problem") as err:
        sheet_with("ingest-b", fastq_1="s3://ingest-b/fastq/a_R2.fastq.gz")
    assert err.value.details == ["line 2, column fastq_2: fastq_2 is the same file as fastq_1"]


# -- lane, library, platform, sample id: what the aligner accepts ---------------------------


@pytest.mark.parametrize("lane", ["lane one", "0", "1.0", "1e3", "1000", "one", "Ⅱ", "١"])
def test_a_lane_that_is_not_a_positive_integer_is_refused(lane: str) -> None:
    assert refused("lane", lane) == [
        "line 2, column lane: the lane is not a whole number between 1 and 999"
    ]


def test_lanes_are_normalised() -> None:
    assert sheet_with(lane="02").rows[0].lane == "2"
    assert sheet_with(lane="").rows[0].lane == "1"


@pytest.mark.parametrize("library", ["lib/1", "lib 1", "lib,1", "L" * 65, "_lib", "lib#1"])
def test_a_library_the_read_group_cannot_hold_is_refused(library: str) -> None:
    (issue,) = refused("library", library)
    assert "library ids (read group LB) use 1-64 letters" in issue


@pytest.mark.parametrize("platform", ["Illumina HiSeq", "SANGER", "nanopore", "ILLUMINA2"])
def test_a_platform_outside_the_sam_pl_values_is_refused(platform: str) -> None:
    (issue,) = refused("platform", platform)
    assert "is not one of ILLUMINA, CAPILLARY, DNBSEQ" in issue


@pytest.mark.parametrize("platform", PLATFORMS)
def test_every_sam_platform_is_accepted_in_any_case(platform: str) -> None:
    assert sheet_with(platform=platform.lower()).rows[0].platform == platform


@pytest.mark.parametrize(("lane", "longest"), [("1", 62), ("8", 62), ("12", 61), ("999", 60)])
def test_sample_ids_are_limited_exactly_by_the_read_group_id(lane: str, longest: int) -> None:
    """The sheet accepts what the aligner takes and refuses what would fail it later."""
    (row,) = sheet_with(sample="S" * longest, lane=lane).rows
    ReadGroup(id=f"{row.sample}.{row.lane}", sample="pk-x", library=row.library).header_line()
    (issue,) = (
        refused("sample", "S" * (longest + 1))
        if lane == "1"
        else _refused_lane("S" * (longest + 1), lane)
    )
    assert f"use at most {longest}" in issue
    with pytest.raises(ValueError, match="read group id"):
        ReadGroup(id=f"{'S' * (longest + 1)}.{lane}", sample="pk-x", library="L").header_line()


def _refused_lane(sample: str, lane: str) -> list[str]:
    with pytest.raises(SampleSheetError) as err:
        sheet_with(sample=sample, lane=lane)
    return err.value.details


def test_a_64_character_sample_id_fails_at_the_sheet_not_in_alignment() -> None:
    (issue,) = refused("sample", "S" * 64)
    assert "read group ID" in issue and "at most 62" in issue
