"""Sample sheet validation: every problem named by line and column, never the patient id."""

from __future__ import annotations

from datetime import date

import pytest

from oncopipe.samplesheet import SampleSheetError, parse_samplesheet, pseudonymised_records

HEADER = "patient,sample,type,fastq_1,fastq_2"
SECRET_ID = "MRN-SECRET-991"


def sheet(*rows: str, header: str = HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def problems(text: str | bytes, **kwargs: object) -> list[str]:
    with pytest.raises(SampleSheetError) as err:
        parse_samplesheet(text, source="samplesheets/s.csv", **kwargs)  # type: ignore[arg-type]
    assert SECRET_ID not in str(err.value) and SECRET_ID not in err.value.report()
    return err.value.details


def test_valid_sheet_with_defaults_and_aliases() -> None:
    parsed = parse_samplesheet(
        "\ufeff"
        + sheet(
            f"{SECRET_ID},P1-T,Tumor,fastq/P1-T_R1.fastq.gz,fastq/P1-T_R2.fastq.gz",
            f"{SECRET_ID},P1-N,normal,fastq/P1-N_R1.fq.gz,fastq/P1-N_R2.fq.gz",
        ),
        source="samplesheets/s.csv",
    )
    tumour, normal = parsed.rows
    assert (tumour.type, normal.type) == ("tumour", "normal")
    assert (tumour.line, tumour.lane, tumour.library, tumour.platform) == (
        2,
        "1",
        "P1-T",
        "ILLUMINA",
    )
    assert parsed.patients() == [SECRET_ID]
    assert parsed.referenced_keys()[0] == "fastq/P1-T_R1.fastq.gz"


def test_optional_columns_parsed() -> None:
    parsed = parse_samplesheet(
        sheet(
            "p,S1,tumour,a_R1.fastq.gz,a_R2.fastq.gz,2,LIB7,ont,dicom/p/,notes/p.txt,2026-03-01",
            header=HEADER + ",lane,library,platform,dicom,notes,note_date",
        ),
        source="s.csv",
        prefix_exists=lambda p: p == "dicom/p/",
    )
    row = parsed.rows[0]
    assert (row.lane, row.library, row.platform) == ("2", "LIB7", "ONT")
    assert row.note_date == date(2026, 3, 1) and row.notes == "notes/p.txt"
    assert parsed.dicom_prefixes() == ["dicom/p/"]


def test_missing_and_unknown_columns_are_named() -> None:
    details = problems(f"patient,sample,type,fastq_1,fastq2\n{SECRET_ID},S,tumour,a.fastq.gz,b\n")
    assert "line 1, column fastq_2: required column is missing" in details
    assert any(d.startswith("line 1, column fastq2: unknown column") for d in details)


def test_every_row_problem_is_collected_with_line_and_column() -> None:
    details = problems(
        sheet(
            f"{SECRET_ID},S1,tumour,a_R1.fastq.gz,a_R2.fastq.gz",
            f"{SECRET_ID},S1,tumour,b_R1.fastq.gz,b_R2.fastq.gz",
            f"{SECRET_ID},S2,metastasis,c_R1.fastq.gz,c_R2.fastq.gz",
            ",S3,normal,d_R1.fastq.gz,d_R2.fastq.gz",
            f"{SECRET_ID},bad id!,normal,e_R1.fastq.gz,e_R2.txt",
            f"{SECRET_ID},S4,normal,a_R1.fastq.gz,f_R2.fastq.gz",
            f"{SECRET_ID},S5,normal,g.fastq.gz,g.fastq.gz",
            f"{SECRET_ID},S6,normal",
        )
    )
    expected = [
        "line 3, column sample: sample S1 already appears on line 2",
        "line 4, column type: type 'metastasis' is not one of tumour, tumor, normal",
        "line 5, column patient: patient is empty: every row needs the source patient id",
        "line 6, column sample: sample ids use",
        "line 6, column fastq_2: e_R2.txt is not a .fastq.gz or .fq.gz file",
        "line 7, column fastq_1: a_R1.fastq.gz is already used on line 2",
        "line 8, column fastq_2: fastq_2 is the same file as fastq_1",
        "line 9: 3 fields, the header has 5",
    ]
    for message in expected:
        assert any(d.startswith(message) for d in details), (message, details)


def test_files_that_do_not_exist_are_named() -> None:
    details = problems(
        sheet(f"{SECRET_ID},S1,tumour,fastq/S1_R1.fastq.gz,fastq/S1_R2.fastq.gz"),
        exists=lambda key: key.endswith("R1.fastq.gz"),
    )
    assert details == [
        "line 2, column fastq_2: file fastq/S1_R2.fastq.gz does not exist in the ingest bucket"
    ]


def test_bad_platform_and_date() -> None:
    details = problems(
        sheet(
            f"{SECRET_ID},S1,tumour,a_R1.fastq.gz,a_R2.fastq.gz,SANGER,2026-13-01",
            header=HEADER + ",platform,note_date",
        )
    )
    assert any(d.startswith("line 2, column platform: platform 'SANGER'") for d in details)
    assert any(d.startswith("line 2, column note_date: '2026-13-01'") for d in details)


def test_empty_header_only_and_not_utf8() -> None:
    assert problems("") == ["the file is empty"]
    assert problems(HEADER + "\n\n") == ["no sample rows after the header"]
    assert problems(b"patient,sample\n\xff\xfe\x00") == [
        "not UTF-8 text (byte 15 cannot be decoded)"
    ]


def test_error_report_lists_every_problem_under_the_file() -> None:
    with pytest.raises(SampleSheetError) as err:
        parse_samplesheet(sheet(f"{SECRET_ID},S1,x,a.fastq.gz,b.fastq.gz"), source="sheets/x.csv")
    report = err.value.report()
    assert report.splitlines()[0] == "sheets/x.csv: 1 problem in the sample sheet"
    assert "line 2, column type" in report
    assert err.value.reason_code == "invalid-samplesheet"


def test_pseudonymised_records_carry_the_key_not_the_patient() -> None:
    parsed = parse_samplesheet(
        sheet(f"{SECRET_ID},S1,tumour,a_R1.fastq.gz,a_R2.fastq.gz"), source="s.csv"
    )
    records = pseudonymised_records(parsed, lambda p: "pk-" + str(len(p)), run_id="run-1")
    assert records[0]["patient_key"] == f"pk-{len(SECRET_ID)}"
    assert "patient" not in records[0]
    assert SECRET_ID not in repr(records)
    assert records[0]["run_id"] == "run-1" and records[0]["source_line"] == 2
