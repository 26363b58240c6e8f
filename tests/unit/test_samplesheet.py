"""Sample sheet validation: every problem named by line and column, never the patient id."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta

import pytest

from oncopipe.pseudonym import date_shift_days, is_object_ref, keyer, object_ref, patient_key
from oncopipe.samplesheet import (
    SampleSheet,
    SampleSheetError,
    SheetIssue,
    parse_samplesheet,
    pseudonymised_records,
    stage_records,
)

HEADER = "patient,sample,type,fastq_1,fastq_2"
FULL_HEADER = HEADER + ",lane,library,platform,dicom,notes,note_date"
SECRET_ID = "MRN-SECRET-991"
SOURCE = "samplesheets/s.csv"
SECRET = bytes(range(32))


def sheet(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def row(sample: str = "S1", kind: str = "tumour", *extra: str, patient: str = SECRET_ID) -> str:
    return ",".join(
        [
            patient,
            sample,
            kind,
            f"fastq/{sample}_R1.fastq.gz",
            f"fastq/{sample}_R2.fastq.gz",
            *extra,
        ]
    )


def parse(text: str | bytes, **kwargs: Callable[[str], bool]) -> SampleSheet:
    return parse_samplesheet(text, source=SOURCE, **kwargs)


def problems(text: str | bytes, **kwargs: Callable[[str], bool]) -> list[str]:
    """Return the issue strings of a sheet that must fail, checking no message leaks PHI."""
    with pytest.raises(SampleSheetError) as err:
        parse(text, **kwargs)
    assert SECRET_ID.lower() not in str(err.value).lower()
    assert SECRET_ID.lower() not in err.value.report().lower()
    assert err.value.details == [str(i) for i in err.value.issues]
    return err.value.details


# -- valid sheets ----------------------------------------------------------------------------


def test_valid_sheet_with_defaults_and_aliases() -> None:
    parsed = parse(
        sheet(
            f"{SECRET_ID},P1-T,Tumor,fastq/P1-T_R1.fastq.gz,fastq/P1-T_R2.fastq.gz",
            f"{SECRET_ID},P1-N,normal,fastq/P1-N_R1.fq.gz,fastq/P1-N_R2.fq.gz",
            "MRN-2,P2-T,TUMOUR,fastq/P2-T_R1.fastq.gz,fastq/P2-T_R2.fastq.gz",
        ),
    )
    tumour, normal, other = parsed.rows
    assert (tumour.type, normal.type, other.type) == ("tumour", "normal", "tumour")
    assert (tumour.line, tumour.lane, tumour.library, tumour.platform) == (
        2,
        "1",
        "P1-T",
        "ILLUMINA",
    )
    assert (tumour.dicom, tumour.notes, tumour.note_date) == (None, None, None)
    assert parsed.source == SOURCE
    assert parsed.patients() == ["MRN-2", SECRET_ID]
    assert parsed.referenced_keys() == [
        "fastq/P1-T_R1.fastq.gz",
        "fastq/P1-T_R2.fastq.gz",
        "fastq/P1-N_R1.fq.gz",
        "fastq/P1-N_R2.fq.gz",
        "fastq/P2-T_R1.fastq.gz",
        "fastq/P2-T_R2.fastq.gz",
    ]
    assert parsed.dicom_prefixes() == []


@pytest.mark.parametrize(
    ("given", "normalised"),
    [("tumour", "tumour"), ("tumor", "tumour"), ("TuMoR", "tumour"), ("NORMAL", "normal")],
)
def test_type_aliases(given: str, normalised: str) -> None:
    assert parse(sheet(row("S1", given))).rows[0].type == normalised


def test_optional_columns_headers_whitespace_and_s3_uris() -> None:
    header = " Patient , SAMPLE,type,Fastq_1,fastq_2,lane,library,platform,DICOM,notes,note_date"
    seen: list[str] = []

    def exists(key: str) -> bool:
        seen.append(key)
        return True

    parsed = parse_samplesheet(
        sheet(
            f" {SECRET_ID} , S1 ,tumour, s3://ingest-b/fastq/run/a_R1.fastq.gz ,"
            "fastq/a_R2.fastq.gz,2,LIB7,ont,dicom/p/,notes/p.txt,2026-03-01",
            f"{SECRET_ID},S2,normal,fastq/b_R1.fastq.gz,fastq/b_R2.fastq.gz,,,,dicom/p/,notes/p.txt,",
            header=header,
        ),
        source=SOURCE,
        exists=exists,
        prefix_exists=lambda p: p == "dicom/p/",
        ingest_bucket="ingest-b",
    )
    first, second = parsed.rows
    assert (first.patient, first.sample) == (SECRET_ID, "S1")
    assert first.fastq_1 == "fastq/run/a_R1.fastq.gz"  # the URI of the ingest bucket: its key
    assert (first.lane, first.library, first.platform) == ("2", "LIB7", "ONT")
    assert first.note_date == date(2026, 3, 1) and first.notes == "notes/p.txt"
    assert (second.lane, second.library, second.platform, second.note_date) == (
        "1",
        "S2",
        "ILLUMINA",
        None,
    )
    assert parsed.dicom_prefixes() == ["dicom/p/"]
    assert parsed.referenced_keys() == [
        "fastq/run/a_R1.fastq.gz",
        "fastq/a_R2.fastq.gz",
        "notes/p.txt",
        "fastq/b_R1.fastq.gz",
        "fastq/b_R2.fastq.gz",
    ]
    # The callback gets ingest keys, each distinct one once.
    assert seen == parsed.referenced_keys()


def test_bom_crlf_blank_lines_and_trailing_empty_fields() -> None:
    text = "\r\n" + HEADER + "\r\n\r\n" + row("S1") + ",,\r\n , , \r\n" + row("S2") + "\r\n"
    for data in (text.encode("utf-8-sig"), "\ufeff" + text):
        parsed = parse(data)
        assert [r.sample for r in parsed.rows] == ["S1", "S2"]
        # Line numbers count every physical line, blank ones included.
        assert [r.line for r in parsed.rows] == [4, 6]


def test_line_numbers_after_a_quoted_multiline_field() -> None:
    details = problems(
        sheet(
            row("S1", "tumour", '"LIB\n1"'),
            row("S2", "normal", "LIB 2"),
            header=HEADER + ",library",
        )
    )
    # The line break inside the quoted field is refused; the next row is still on line 4.
    assert details == [
        "line 2, column library: the value contains a control character",
        "line 4, column library: library ids (read group LB) use 1-64 letters, digits, '_', "
        "'.', ':', '-', starting with a letter or digit",
    ]


# -- header problems -------------------------------------------------------------------------


def test_missing_and_unknown_columns_are_named() -> None:
    details = problems(
        f"patient,sample,type,fastq_1,fastq2\n{SECRET_ID},S,tumour,fastq/a.fastq.gz,b\n"
    )
    assert details[0] == "line 1, column fastq_2: required column is missing"
    assert details[1].startswith("line 1, column fastq2: unknown column; allowed: patient,")
    assert "note_date" in details[1]


def test_every_missing_required_column_is_its_own_issue() -> None:
    details = problems("patient,lane\nx,1\n")
    assert details == [
        f"line 1, column {c}: required column is missing"
        for c in ("sample", "type", "fastq_1", "fastq_2")
    ]


def test_duplicate_column() -> None:
    details = problems(sheet(row() + ",x", header=HEADER + ",Sample"))
    assert details == ["line 1, column sample: column appears more than once"]


def test_a_sheet_without_header_does_not_echo_its_first_row() -> None:
    details = problems(sheet(row("S2"), header=row("S1")))
    assert "line 1, column patient: required column is missing" in details
    assert details[-1].startswith(
        "line 1: the header row names no known column (is it missing?); allowed:"
    )


# -- row problems ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz",
            "line 2: 4 fields, the header has 11",
        ),
        (
            ",S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column patient: patient is empty: every row needs the source patient id",
        ),
        (
            f"{SECRET_ID},,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column sample: ",
        ),
        (
            f"{SECRET_ID},S1,,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column type: type is",
        ),
        (f"{SECRET_ID},S1,tumour,,fastq/a_R2.fastq.gz,,,,,,", "line 2, column fastq_1: fastq_1 is"),
        (f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,,,,,,,", "line 2, column fastq_2: fastq_2 is"),
        (
            f"{SECRET_ID},-S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column sample: the value starts with a spreadsheet formula character",
        ),
        (
            f"{SECRET_ID},S 1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column sample: sample ids use 1-62 letters",
        ),
        (
            f"{SECRET_ID},{'S' * 63},tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column sample: the sample id has 63 characters: with its lane it makes the "
            "read group ID '<sample>.1', which the aligner limits to 64, so use at most 62",
        ),
        (
            f"{SECRET_ID},S1,relapse,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column type: type 'relapse' is not one of tumour, tumor, normal",
        ),
        (
            f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column fastq_1: fastq/a_R1.fastq is not a .fastq.gz or .fq.gz file",
        ),
        (
            f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.bam,,,,,,",
            "line 2, column fastq_2: fastq/a_R2.bam is not a .fastq.gz or .fq.gz file",
        ),
        (
            f"{SECRET_ID},S1,tumour,fastq/a.fastq.gz,fastq/a.fastq.gz,,,,,,",
            "line 2, column fastq_2: fastq_2 is the same file as fastq_1",
        ),
        (
            f"{SECRET_ID},S1,tumour,s3://b/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column fastq_1: s3://b/a_R1.fastq.gz is not an s3://bucket/key URI",
        ),
        (
            f"{SECRET_ID},S1,tumour,s3://ingest-b/fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column fastq_1: s3:// URIs are accepted only for the ingest bucket, which "
            "is not known here",
        ),
        (
            f"{SECRET_ID},S1,tumour,https://x.org/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column fastq_1: https://x.org/a_R1.fastq.gz: give a key in the ingest",
        ),
        (
            f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,SANGER,,,",
            "line 2, column platform: platform 'SANGER' is not one of ILLUMINA, CAPILLARY,",
        ),
        (
            f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,2026-13-01",
            "line 2, column note_date: '2026-13-01' is not a YYYY-MM-DD date",
        ),
        (
            f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,20260301",
            "line 2, column note_date: '20260301' is not a YYYY-MM-DD date",
        ),
        (
            f"{SECRET_ID},{SECRET_ID}-T,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,,,,,",
            "line 2, column sample: sample id contains a patient id",
        ),
        (
            f"{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,,lib-{SECRET_ID},,,,",
            "line 2, column library: library id contains a patient id",
        ),
    ],
)
def test_each_row_problem_names_line_and_column(line: str, expected: str) -> None:
    details = problems(sheet(line, header=FULL_HEADER))
    assert len(details) == 1 and details[0].startswith(expected), details


def test_every_row_problem_is_collected_in_one_error() -> None:
    details = problems(
        sheet(
            row("S1"),
            f"{SECRET_ID},S1,tumour,fastq/b_R1.fastq.gz,fastq/b_R2.fastq.gz",
            row("S2", "metastasis"),
            row("S3", "normal", patient=""),
            f"{SECRET_ID},bad id!,normal,fastq/e_R1.fastq.gz,fastq/e_R2.txt",
            f"{SECRET_ID},S4,normal,fastq/S1_R1.fastq.gz,fastq/f_R2.fastq.gz",
            f"{SECRET_ID},S5,normal,fastq/g.fastq.gz,fastq/g.fastq.gz",
            f"{SECRET_ID},S6,normal",
        )
    )
    assert details == [
        "line 3, column sample: sample S1 already appears on line 2",
        "line 4, column type: type 'metastasis' is not one of tumour, tumor, normal",
        "line 5, column patient: patient is empty: every row needs the source patient id",
        "line 6, column sample: sample ids use 1-62 letters, digits, '_', '.', '-', starting "
        "with a letter or digit",
        "line 6, column fastq_2: fastq/e_R2.txt is not a .fastq.gz or .fq.gz file",
        "line 7, column fastq_1: fastq/S1_R1.fastq.gz is already used on line 2",
        "line 8, column fastq_2: fastq_2 is the same file as fastq_1",
        "line 9: 3 fields, the header has 5",
    ]


def test_files_and_prefixes_that_do_not_exist_are_named() -> None:
    details = problems(
        sheet(
            f"{SECRET_ID},S1,tumour,fastq/S1_R1.fastq.gz,fastq/S1_R2.fastq.gz,dicom/p1/,notes/x",
            header=HEADER + ",dicom,notes",
        ),
        exists=lambda key: key.endswith("R1.fastq.gz"),
        prefix_exists=lambda prefix: False,
    )
    assert details == [
        "line 2, column fastq_2: file fastq/S1_R2.fastq.gz does not exist in the ingest bucket",
        "line 2, column notes: file notes/x does not exist in the ingest bucket",
        "line 2, column dicom: no objects under dicom/p1/",
    ]


def test_empty_header_only_not_utf8_and_unreadable_csv() -> None:
    assert problems("") == ["the file is empty"]
    assert problems(b"\xef\xbb\xbf \n\n") == ["the file is empty"]
    assert problems(HEADER + "\n\n") == ["no sample rows after the header"]
    assert problems(b"patient,sample\n\xff\xfe\x00") == [
        "not UTF-8 text (byte 15 cannot be decoded)"
    ]
    huge = sheet(row("S1", "tumour", "x" * 200_000), header=HEADER + ",notes")
    assert problems(huge)[0].startswith("line 2: not readable as CSV: field larger than")


# -- the error -------------------------------------------------------------------------------


def test_error_headline_report_and_reason_code() -> None:
    with pytest.raises(SampleSheetError) as err:
        parse_samplesheet(sheet(row("S1", "x"), row("S2", "y")), source="sheets/x.csv")
    assert str(err.value) == "sheets/x.csv: 2 problems in the sample sheet"
    assert err.value.source == "sheets/x.csv"
    assert err.value.reason_code == "invalid-samplesheet"
    assert err.value.report().splitlines() == [
        "sheets/x.csv: 2 problems in the sample sheet",
        "  line 2, column type: type 'x' is not one of tumour, tumor, normal",
        "  line 3, column type: type 'y' is not one of tumour, tumor, normal",
    ]
    single = SampleSheetError("a.csv", [SheetIssue(None, "sample", "m")])
    assert str(single) == "a.csv: 1 problem in the sample sheet"
    assert single.details == ["column sample: m"]


def test_patient_id_never_appears_in_messages() -> None:
    """Patient ids shifted into other columns or inside file keys are hidden too."""
    other = "MRN-OTHER-123"
    with pytest.raises(SampleSheetError) as err:
        parse(
            sheet(
                # columns shifted: the patient id lands in `type`
                f"S1,{SECRET_ID},{SECRET_ID},fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz",
                f"{SECRET_ID},S2,tumour,fastq/{SECRET_ID}_R1.fastq.gz,fastq/{SECRET_ID}_R2.txt",
                f"{other},S3,normal,fastq/{other.lower()}_R1.fq.gz,fastq/S3_R2.fq.gz",
                f"{SECRET_ID},S4,normal,fastq/c_R1.fastq.gz",
                f"{SECRET_ID},{SECRET_ID},normal,fastq/d_R1.fastq.gz,fastq/d_R2.fastq.gz",
            ),
            exists=lambda key: False,
        )
    messages = str(err.value) + "\n" + err.value.report() + "\n" + repr(err.value.issues)
    for secret in (SECRET_ID, other):
        assert secret.lower() not in messages.lower()
    assert "line 3, column fastq_2: fastq/<patient id>_R2.txt is not a .fastq.gz" in messages
    assert "file fastq/<patient id>_R1.fq.gz does not exist" in messages
    assert "type '<patient id>' is not one of" in messages


# -- pseudonymised records -------------------------------------------------------------------


def test_pseudonymised_records_carry_the_key_shifted_dates_and_opaque_refs() -> None:
    parsed = parse(
        sheet(
            row("S1", "tumour", "", "", ""),
            row("S2", "normal", "dicom/x/", "notes/n.txt", "2025-01-31", patient="MRN-2"),
            header=HEADER + ",dicom,notes,note_date",
        )
    )
    records = pseudonymised_records(parsed, SECRET, run_id="run-1")
    shift = date_shift_days(SECRET, "MRN-2")
    assert records[1] == {
        "patient_key": patient_key(SECRET, "MRN-2"),
        "sample": "S2",
        "type": "normal",
        "lane": "1",
        "library": "S2",
        "platform": "ILLUMINA",
        # the same shift as the patient's images and notes, so it cannot be read off
        "note_date": (date(2025, 1, 31) + timedelta(days=shift)).isoformat(),
        "fastq_1_ref": object_ref(SECRET, "fastq/S2_R1.fastq.gz"),
        "fastq_2_ref": object_ref(SECRET, "fastq/S2_R2.fastq.gz"),
        "dicom_ref": object_ref(SECRET, "dicom/x/"),
        "notes_ref": object_ref(SECRET, "notes/n.txt"),
        "samplesheet_ref": object_ref(SECRET, SOURCE),
        "source_line": 3,
        "run_id": "run-1",
    }
    assert records[0]["note_date"] is None and records[0]["dicom_ref"] is None
    text = repr(records)
    for phi in (SECRET_ID, "MRN-2", "2025-01-31", "fastq/", "notes/", "dicom/", SOURCE):
        assert phi not in text, phi
    assert all(is_object_ref(str(r["fastq_1_ref"])) for r in records)


def test_stage_records_keep_the_ingest_keys_for_the_phi_zone() -> None:
    parsed = parse(
        sheet(
            row("S2", "normal", "dicom/x/", "notes/n.txt", "2025-01-31", patient="MRN-2"),
            header=HEADER + ",dicom,notes,note_date",
        )
    )
    (record,) = stage_records(parsed, keyer(SECRET), run_id="run-1")
    assert record["source_patient_id"] == "MRN-2"
    assert record["patient_key"] == patient_key(SECRET, "MRN-2")
    assert (record["fastq_1"], record["notes"], record["note_date"]) == (
        "fastq/S2_R1.fastq.gz",
        "notes/n.txt",
        "2025-01-31",
    )


def test_file_keys_that_name_the_patient_are_accepted_but_never_curated() -> None:
    """Exports name files after patients: the keys stay in the PHI zone, so they may."""
    text = (
        "patient,sample,type,fastq_1,fastq_2,notes\n"
        "MRN-77,S1,tumour,fastq/MRN-77_R1.fastq.gz,fastq/S1_R2.fastq.gz,"
        "notes/moreau_aiko_1955-07-30.txt\n"
    )
    parsed = parse_samplesheet(text, source="samplesheets/moreau_aiko.csv")
    curated = repr(pseudonymised_records(parsed, SECRET, run_id="r"))
    for phi in ("MRN-77", "moreau", "1955-07-30", "MRN77"):
        assert phi.lower() not in curated.lower(), phi


def test_a_sample_may_span_lanes_but_not_repeat_one() -> None:
    header = "patient,sample,type,fastq_1,fastq_2,lane"
    parsed = parse_samplesheet(
        f"{header}\n{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,1\n"
        f"{SECRET_ID},S1,tumour,fastq/b_R1.fastq.gz,fastq/b_R2.fastq.gz,2\n",
        source="s.csv",
    )
    assert [(r.sample, r.lane) for r in parsed.rows] == [("S1", "1"), ("S1", "2")]
    details = problems(
        f"{header}\n{SECRET_ID},S1,tumour,fastq/a_R1.fastq.gz,fastq/a_R2.fastq.gz,1\n"
        f"{SECRET_ID},S1,tumour,fastq/b_R1.fastq.gz,fastq/b_R2.fastq.gz,1\n"
        f"OTHER-PATIENT-7,S1,normal,fastq/c_R1.fastq.gz,fastq/c_R2.fastq.gz,3\n"
    )
    assert "line 3, column sample: sample S1 already appears on line 2 with lane 1" in details
    assert "line 4, column patient: sample S1 has another patient than on line 2" in details
    assert "line 4, column type: sample S1 is normal here but tumour on line 2" in details
