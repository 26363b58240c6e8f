"""Clinical notes core: parsing, PHI scrubbing, concept extraction, tokenizer.

Two evaluation sets, both scored with ``oncopipe.notes.evaluate`` (run with ``-s`` to see P/R/F1):

* 100 notes from ``oncopipe.notes.sample`` (seeded) against their gold;
* 20 hand-written notes in ``tests/data/notes`` (clinic, pathology, radiology, discharge,
  tumour-board, telephone and letter styles) against ``gold.json``. Notes 01-15 were written
  and annotated before the rules; notes 16-20 were written and annotated afterwards as a
  held-out check: on its first run the held-out set scored P 0.93 / R 0.88 / F1 0.90, and the
  errors led to generic rule fixes (TNM in capitals, "+" between sites, "pack-years, quit",
  section scope for family defaults, ConText "to exclude" as uncertainty, ";" ending cues).
  One held-out miss remains on purpose: "PCI ... pt declined" (PCI also means a coronary
  intervention, so it is not in the therapy lexicon).
"""

from __future__ import annotations

import json
import logging
import random
import re
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from oncopipe import sample_people
from oncopipe.errors import InputError, MissingPatientError
from oncopipe.notes import core, nlp, rules, tokenizer
from oncopipe.notes.core import NoteInputError, NoteResult, parse_note, process_note
from oncopipe.notes.evaluate import evaluate
from oncopipe.notes.sample import FIRST_NAMES, LAST_NAMES, GoldConcept, NoteProfile, generate_note
from oncopipe.notes.scrub import scrub
from oncopipe.pseudonym import date_shift_days

DATA = Path(__file__).parents[1] / "data" / "notes"
SECRET = bytes(range(32))
GENERATED = 100


@pytest.fixture(scope="module")
def pipeline() -> Any:
    return nlp.get_nlp()


@pytest.fixture(scope="module")
def generated(pipeline: Any) -> list[tuple[str, list[GoldConcept], list[str], NoteResult]]:
    rng = random.Random(20260314)
    out = []
    for i in range(GENERATED):
        mrn = f"MRN-{rng.randrange(1_000_000, 9_999_999)}"
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        day = date(2026, 1, 1) + timedelta(days=rng.randrange(365))
        text, gold, phi = generate_note(rng, mrn=mrn, name=name, note_date=day)
        result = process_note(
            text.encode(), f"ingest/notes/p{i:03d}.txt", secret=SECRET, fallback_patient_id=None
        )
        out.append((text, gold, phi, result))
    return out


@pytest.fixture(scope="module")
def handwritten(pipeline: Any) -> tuple[list[str], list[NoteResult], list[list[dict[str, Any]]]]:
    gold = json.loads((DATA / "gold.json").read_text())["notes"]
    names = sorted(gold)
    results = [
        process_note(
            (DATA / name).read_bytes(),
            name,
            secret=SECRET,
            fallback_patient_id=gold[name]["fallback_patient_id"],
        )
        for name in names
    ]
    return names, results, [gold[name]["concepts"] for name in names]


def _print_scores(label: str, scores: dict[str, Any]) -> None:
    print(
        f"\n{label}: P={scores['precision']:.3f} R={scores['recall']:.3f} F1={scores['f1']:.3f} "
        f"(tp={scores['tp']} fp={scores['fp']} fn={scores['fn']} "
        f"attribute errors={scores['attribute_errors']})"
    )


# --- parsing -----------------------------------------------------------------------------------


def test_header_gives_patient_and_date_and_body() -> None:
    note = parse_note(
        b"Patient-ID: MRN-77\nNote-Date: 2026-03-14\n\nHPI: cough.\n",
        "n.txt",
        fallback_patient_id="SHEET-1",
    )
    assert (note.source_patient_id, note.note_date, note.body) == (
        "MRN-77",
        date(2026, 3, 14),
        "HPI: cough.\n",
    )
    assert note.decode_replaced is False


def test_fallback_patient_when_no_header_and_crlf_normalised() -> None:
    note = parse_note(b"HPI: cough.\r\nPlan: CT.\r\n", "n.txt", fallback_patient_id="SHEET-1")
    assert note.source_patient_id == "SHEET-1"
    assert note.note_date is None
    assert note.body == "HPI: cough.\nPlan: CT.\n"


def test_not_utf8_is_decoded_as_cp1252_without_replacement_characters() -> None:
    note = parse_note(b"Patient-ID: P1\n\nECOG 1 caf\xe9 \xff \x81\n", "n.txt")
    assert note.decode_replaced is False and note.encoding == "cp1252"
    assert "\ufffd" not in note.body and "ECOG 1 café ÿ \x81" in note.body


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"  \n\t\r\n  ", "empty"),
        (b"Patient-ID: P1\n\nSECRETNOTE text\x00\x00 more", "binary"),
        (b"SECRETNOTE" + bytes(range(1, 9)) * 3, "binary"),
        (b"Patient-ID: P1\nNote-Date: 14/03/2026\n\nSECRETNOTE", "Note-Date"),
    ],
)
def test_bad_notes_raise_input_error_naming_source_not_text(data: bytes, reason: str) -> None:
    with pytest.raises(NoteInputError) as info:
        parse_note(data, "ingest/notes/bad.txt", fallback_patient_id="P1")
    assert isinstance(info.value, InputError)
    assert info.value.reason_code == "invalid-note"
    assert "ingest/notes/bad.txt" in str(info.value) and reason in str(info.value)
    assert "SECRETNOTE" not in str(info.value)


def test_missing_patient_raises_missing_patient_error() -> None:
    with pytest.raises(MissingPatientError) as info:
        parse_note(b"Note-Date: 2026-03-14\n\nSECRETNOTE: Maria Keller.\n", "notes/x.txt")
    assert "notes/x.txt" in str(info.value)
    assert "SECRETNOTE" not in str(info.value) and "Keller" not in str(info.value)


# --- scrubbing ---------------------------------------------------------------------------------


def test_generated_notes_keep_no_planted_phi(generated: list[Any]) -> None:
    leaks = [
        (i, value)
        for i, (_, _, phi, result) in enumerate(generated)
        for value in phi
        if value.lower() in result.text.lower()
    ]
    assert leaks == []
    totals: dict[str, int] = {}
    for *_, result in generated:
        for category, count in result.scrub_counts.items():
            totals[category] = totals.get(category, 0) + count
    print(f"\nscrub counts over {GENERATED} generated notes: {dict(sorted(totals.items()))}")
    assert {"name", "date", "id", "phone", "email", "url", "address", "age"} <= set(totals)


def test_generated_notes_without_shift_keep_no_planted_phi(generated: list[Any]) -> None:
    for text, _, phi, _ in generated[:30]:
        scrubbed = scrub(text, date_shift_days=None).text.lower()
        assert [v for v in phi if v.lower() in scrubbed] == []


def test_dates_are_shifted_by_exact_days_in_their_format() -> None:
    shift = date_shift_days(SECRET, "MRN-1234567")
    assert shift < 0
    day = date(2026, 3, 14) + timedelta(days=shift)
    text = "2026-03-14 | 03/14/2026 | 3/14/26 | 14.03.2026 | March 14, 2026 | 14 Mar 2026"
    expected = " | ".join(
        (
            day.isoformat(),
            f"{day.month:02d}/{day.day:02d}/{day.year}",
            f"{day.month}/{day.day:02d}/{day.year % 100:02d}",
            f"{day.day:02d}.{day.month:02d}.{day.year}",
            f"{day.strftime('%B')} {day.day:02d}, {day.year}",
            f"{day.day:02d} {day.strftime('%b')} {day.year}",
        )
    )
    assert scrub(text, date_shift_days=shift).text == expected


def test_month_year_is_shifted_and_year_alone_kept() -> None:
    out = scrub("dx Mar 2026, quit smoking in 2019, restaged 11/2025", date_shift_days=-100).text
    # a two-digit field stays two digits ("11" -> "08")
    assert out == "dx Dec 2025, quit smoking in 2019, restaged 08/2025"


def test_dates_without_shift_become_placeholders() -> None:
    out = scrub("seen 2026-03-14 and March 14, 2026", date_shift_days=None)
    assert out.text == "seen [DATE] and [DATE]"
    assert out.counts == {"date": 2}


def test_clinical_content_survives_scrubbing() -> None:
    clinical = [
        "ECOG 1",
        "Stage IIIA",
        "T2N2M0",
        "PD-L1 80%",
        "KRAS G12C",
        "EGFR exon 19 deletion",
        "20 pack-years",
        "L858R",
        "75 mg/m2",
        "PIK3CA H1047R",
        "1/2 ppd",
        "2/5 nodes",
        "30 Gy/10 fx",
        "Keytruda",
        "Bone",
        "pT2a pN2",
        "carbo/pem",
        "ECOG PS 0-1",
    ]
    text = (
        "Maria Keller (MRN 1234567, 617-555-0142) seen by Dr. Whitcombe on 03/14/2026. "
        + ", ".join(clinical)
        + "."
    )
    out = scrub(text, date_shift_days=-10).text
    assert all(term in out for term in clinical), out
    assert "Keller" not in out and "1234567" not in out and "Whitcombe" not in out


@pytest.mark.parametrize(
    ("phrase", "kept"),
    [
        ("a 67-year-old man", True),
        ("age 89", True),
        ("45 yo", True),
        ("a 92-year-old man", False),
        ("age 93", False),
        ("93 yo", False),
        ("93 y/o", False),
        ("aged 101", False),
    ],
)
def test_ages_over_89_are_removed(phrase: str, kept: bool) -> None:
    out = scrub(f"Pt is {phrase} with NSCLC.", date_shift_days=None).text
    assert (phrase in out) is kept
    assert ("[AGE>89]" in out) is not kept


def test_identifiers_contacts_and_addresses() -> None:
    text = (
        "MRN-1234567; Patient-ID: AB123456; SSN 123-45-6789; acct #99812; accession S25-18842; "
        "(617) 555-0142; +1 617 555 0142; fax 617.555.0142; call 555-0142; pager 4-5521; "
        "jo.doe@example.org; https://portal.example.org/p/1; www.example.org/x; "
        "lives at 12 Oak Street, Springfield, MA 01101; Boston, MA 02134; on Maple Drive."
    )
    out = scrub(text, date_shift_days=None)
    for value in (
        "1234567",
        "AB123456",
        "6789",
        "99812",
        "S25",
        "0142",
        "5521",
        "jo.doe",
        "example.org",
        "Oak",
        "Springfield",
        "01101",
        "Boston",
        "02134",
        "Maple",
    ):
        assert value not in out.text, value
    assert out.counts["id"] >= 5 and out.counts["phone"] == 5 and out.counts["email"] == 1
    assert out.counts["url"] == 2 and out.counts["address"] == 3


def test_names_from_patient_titles_labels_and_lexicon() -> None:
    text = (
        "Zyxa Qwertyuiop came with Mrs. Ngozi Adeyemi. Referring: Dr. Farrowdale. "
        "Patient: HARTLEY, DOUGLAS. Signed by: M. Okonkwo, MD. Maria tolerated it; "
        "spoke with Xavo Keller. Grace Bone White blood cells. Will follow up."
    )
    out = scrub(text, patient_names=["zyxa qwertyuiop"], date_shift_days=None).text
    for name in (
        "Zyxa",
        "Qwertyuiop",
        "Ngozi",
        "Adeyemi",
        "Farrowdale",
        "HARTLEY",
        "DOUGLAS",
        "Okonkwo",
        "Maria",
        "Xavo",
        "Keller",
        "Grace",
    ):
        assert name not in out, name
    # common words that are also surnames or names are left alone outside a name context
    assert "Bone White blood cells. Will follow up." in out


def test_name_lexicon_covers_samples_and_avoids_clinical_terms() -> None:
    lexicon = rules.FIRST_NAMES | rules.SURNAMES
    sample_names = {n.lower() for n in (*sample_people.FIRST_NAMES, *sample_people.LAST_NAMES)}
    generator_names = {n.lower() for n in (*FIRST_NAMES, *LAST_NAMES)}
    assert sample_names | generator_names <= lexicon
    assert lexicon & rules.CLINICAL_WORDS == set()


# --- extraction --------------------------------------------------------------------------------


def test_generated_notes_f1(generated: list[Any]) -> None:
    scores = evaluate([r.concepts for *_, r in generated], [g for _, g, _, _ in generated])
    _print_scores(f"generated ({GENERATED} notes)", scores)
    assert scores["f1"] >= 0.90
    assert scores["attribute_errors"] == 0


def test_handwritten_notes_f1(handwritten: Any) -> None:
    names, results, gold = handwritten
    assert len(names) >= 12
    scores = evaluate([r.concepts for r in results], gold)
    _print_scores(f"hand-written ({len(names)} notes)", scores)
    for name, errors in zip(names, scores["errors"], strict=True):
        if errors["missed"] or errors["spurious"]:
            print(f"  {name}: missed {errors['missed']} spurious {errors['spurious']}")
    assert scores["f1"] >= 0.90
    assert scores["attribute_errors"] == 0


def test_profile_forces_the_facts_a_label_depends_on(pipeline: Any) -> None:
    rng = random.Random(9)
    profile = NoteProfile(ecog=1, biomarkers=("KRAS G12C",), smoking="former", metastases=())
    for _ in range(5):
        text, gold, _ = generate_note(
            rng, mrn="MRN-1000001", name="Omar Haddad", note_date=date(2026, 1, 5), profile=profile
        )
        facts = {(g.concept, g.value, g.negated) for g in gold}
        assert {("ecog", "1", False), ("biomarker", "KRAS G12C", False)} <= facts
        assert ("metastasis", "any", True) in facts and ("smoking", "former", False) in facts
        found = {
            (c.concept, c.value, c.negated)
            for c in nlp.extract(scrub(text, date_shift_days=-3).text)
        }
        assert facts <= found


def test_spans_index_the_scrubbed_text(generated: list[Any], handwritten: Any) -> None:
    results = [r for *_, r in generated] + handwritten[1]
    for result in results:
        for c in result.concepts:
            mention = result.text[c.start : c.end]
            assert mention.strip(), c
            if c.concept == "biomarker" and c.value and re.search(r"[A-Z]\d+[A-Z]$", c.value):
                assert c.value.split()[-1] in mention, (c, mention)
            if c.concept == "ecog":
                assert c.value in mention
    kras = [(r.text, c) for r in results for c in r.concepts if c.value == "KRAS G12C"]
    assert kras and all("G12C" in text[c.start : c.end] for text, c in kras)


def test_stage_group_and_tnm_are_both_rows(pipeline: Any) -> None:
    found = {(c.concept, c.value) for c in nlp.extract("Stage IIIA (cT2a N2 M0) adenocarcinoma.")}
    assert {("stage", "IIIA"), ("stage", "cT2aN2M0")} <= found
    assert rules.is_tnm("cT2aN2M0") and not rules.is_tnm("IIIA")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("KRAS wild-type.", ("biomarker", "KRAS mutation", None, True, "patient", "current")),
        ("No EGFR mutation.", ("biomarker", "EGFR mutation", None, True, "patient", "current")),
        ("EML4-ALK fusion.", ("biomarker", "ALK fusion", None, False, "patient", "current")),
        ("PD-L1 <1%.", ("biomarker", "PD-L1", 0.0, False, "patient", "current")),
        ("PD-L1 expression of 50 %.", ("biomarker", "PD-L1", 50.0, False, "patient", "current")),
        ("ECOG PS of 2.", ("ecog", "2", 2.0, False, "patient", "current")),
        ("Stage four NSCLC.", ("stage", "IV", None, False, "patient", "current")),
        (
            "No evidence of metastatic disease.",
            ("metastasis", "any", None, True, "patient", "current"),
        ),
        ("Osseous metastases.", ("metastasis", "bone", None, False, "patient", "current")),
        (
            "Mother had lung adenocarcinoma.",
            ("histology", "adenocarcinoma", None, False, "family", "current"),
        ),
        (
            "If progression, consider docetaxel.",
            ("therapy", "docetaxel", None, False, "patient", "hypothetical"),
        ),
        (
            "History of prior Keytruda.",
            ("therapy", "pembrolizumab", None, False, "patient", "historical"),
        ),
        ("Never smoker.", ("smoking", "never", None, False, "patient", "current")),
        ("Former smoker, 40 PY.", ("smoking", "former", 40.0, False, "patient", "current")),
    ],
)
def test_assertions_and_normalisation(pipeline: Any, text: str, expected: tuple[Any, ...]) -> None:
    rows = {
        (c.concept, c.value, c.numeric_value, c.negated, c.experiencer, c.temporality)
        for c in nlp.extract(text)
    }
    assert expected in rows


def test_section_defaults_and_unknown_section(pipeline: Any) -> None:
    text = (
        "Seen for adenocarcinoma.\n"
        "PAST MEDICAL HISTORY: SCLC treated with etoposide.\n"
        "FAMILY HISTORY:\nSibling w/ squamous cell carcinoma.\nUncle: smoker.\n"
        "Performance: ECOG 1.\n"
    )
    by_value = {c.value: c for c in nlp.extract(text)}
    assert by_value["adenocarcinoma"].section is None
    assert by_value["small cell carcinoma"].section == "past_medical_history"
    assert by_value["small cell carcinoma"].temporality == "historical"
    assert by_value["squamous cell carcinoma"].experiencer == "family"
    assert by_value["current"].experiencer == "family"
    assert by_value["1"].experiencer == "patient"  # ECOG is never a relative's


def test_extract_many_matches_extract(generated: list[Any]) -> None:
    texts = [r.text for *_, r in generated[:5]]
    assert nlp.extract_many(texts) == [nlp.extract(t) for t in texts]


def test_concept_rows_fit_the_parquet_schema(generated: list[Any]) -> None:
    import pyarrow as pa

    result = generated[0][3]
    rows = core.concept_rows(result)
    assert rows and all(tuple(row) == core.NOTES_COLUMNS for row in rows)
    table = pa.Table.from_pylist(rows, schema=core.notes_schema())
    assert table.num_rows == len(result.concepts)
    assert core.NOTES_SCHEMA == core.notes_schema()
    assert result.note_id == core.note_id_for("ingest/notes/p000.txt")
    assert re.fullmatch(r"[0-9a-f]{16}", result.note_id)
    assert result.patient_key.startswith("pk-")


def test_note_date_is_shifted_like_images() -> None:
    data = b"Patient-ID: MRN-42\nNote-Date: 2026-03-14\n\nECOG 0 on 2026-03-14.\n"
    result = process_note(data, "n.txt", secret=SECRET, fallback_patient_id=None)
    shifted = date(2026, 3, 14) + timedelta(days=date_shift_days(SECRET, "MRN-42"))
    assert result.note_date == shifted.isoformat()
    assert shifted.isoformat() in result.text and "MRN-42" not in result.text


# --- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_is_deterministic_truncates_and_round_trips(
    generated: list[Any], tmp_path: Path
) -> None:
    texts = [r.text for *_, r in generated]
    first = tokenizer.train_tokenizer(texts, vocab_size=2000)
    second = tokenizer.train_tokenizer(texts, vocab_size=2000)
    assert first.get_vocab() == second.get_vocab()
    assert 500 < first.get_vocab_size() <= 2000
    sample = texts[0]
    ids = tokenizer.encode(first, sample, max_length=512)
    assert ids == tokenizer.encode(second, sample, max_length=512)
    cls, sep = first.token_to_id("[CLS]"), first.token_to_id("[SEP]")
    assert ids[0] == cls and ids[-1] == sep and len(ids) > 20
    short = tokenizer.encode(first, sample, max_length=16)
    assert len(short) == 16 and short[0] == cls and short[-1] == sep and short[1:15] == ids[1:15]
    path = tokenizer.save_tokenizer(first, tmp_path / "tok")
    assert path.name == "tokenizer.json"
    assert tokenizer.encode(tokenizer.load_tokenizer(path.parent), sample) == ids
    text = tokenizer.tokenizer_json(first)
    assert tokenizer.encode(tokenizer.load_tokenizer_json(text), sample) == ids
    with pytest.raises(ValueError):
        tokenizer.load_tokenizer_json("{}")
    with pytest.raises(ValueError):
        tokenizer.train_tokenizer(texts, vocab_size=10)


# --- logs --------------------------------------------------------------------------------------


def test_building_and_running_writes_no_phi_or_text(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(5)
    text, _, phi = generate_note(
        rng, mrn="MRN-5550001", name="Aiko Tanaka", note_date=date(2026, 2, 2)
    )
    caplog.set_level(logging.DEBUG)
    nlp.get_nlp.cache_clear()  # build again while stderr is captured
    result = process_note(text.encode(), "notes/aiko.txt", secret=SECRET, fallback_patient_id=None)
    assert result.concepts
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    sentences = [s for s in re.split(r"[.\n]", result.text) if len(s) > 25]
    assert sentences and not [s for s in sentences if s in logged]
    assert not [v for v in phi if v in logged]
    assert "notes/aiko.txt" not in logged


def test_cli_scrubs_and_extracts_and_refuses_bad_notes(tmp_path, monkeypatch) -> None:
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from oncopipe.cli import main

    monkeypatch.delenv("PSEUDONYM_SECRET_ARN", raising=False)
    monkeypatch.setenv("ONCOPIPE_PSEUDONYM_SECRET", "ab" * 32)
    notes = tmp_path / "in"
    notes.mkdir()
    (notes / "a.txt").write_text(
        "Patient-ID: MRN-7654321\nNote-Date: 2026-03-02\n\nSeen by Dr. Okafor on 03/02/2026. "
        "Stage IV adenocarcinoma, KRAS G12C. ECOG 1. No brain metastases.\n"
    )
    (notes / "empty.txt").write_bytes(b"")
    result = CliRunner().invoke(
        main,
        [
            "notes",
            str(notes),
            "--out",
            str(tmp_path / "c.parquet"),
            "--scrubbed-out",
            str(tmp_path / "s"),
        ],
    )
    assert result.exit_code == 1 and "empty.txt" in result.output
    table = pq.read_table(tmp_path / "c.parquet").to_pylist()
    assert {(r["concept"], r["value"], r["negated"]) for r in table} >= {
        ("biomarker", "KRAS G12C", False),
        ("ecog", "1", False),
        ("metastasis", "brain", True),
    }
    scrubbed = next((tmp_path / "s").rglob("*.txt")).read_text()
    assert (
        "Okafor" not in scrubbed and "MRN-7654321" not in scrubbed and "03/02/2026" not in scrubbed
    )
    assert "MRN-7654321" not in result.output and "Okafor" not in result.output
