"""PHI in clinical notes: names outside every lexicon, legacy encodings, size and time bounds.

* Held-out names (``tests/data/notes/heldout_names.txt``: 206 names, 373 name parts from Chinese,
  Japanese, Korean, Vietnamese, Indian, Arabic, Persian, Turkish, Slavic, Greek, Nordic, African,
  Latin American and accented Western European names, hyphenated and particle surnames), none in
  a lexicon of the project, planted in every position of
  :data:`oncopipe.notes.evaluate.NAME_TEMPLATES`: none may survive. Before the safelist scrubber,
  2120 of the 2884 planted notes kept a part of the name (every name leaked somewhere).
* cp1252 / Latin-1 notes decode to the letters they hold (no U+FFFD), and their names go.
* A note's time is linear: the NLP sees bounded pieces, no scrubber regex backtracks on long runs,
  and a note over the size cap is quarantined as ``note-too-large``.
"""

from __future__ import annotations

import json
import re
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from oncopipe import sample_people
from oncopipe.notes import nlp, rules, sample as note_sample
from oncopipe.notes.core import (
    DEFAULT_MAX_NOTE_BYTES,
    NoteInputError,
    NoteTooLargeError,
    decode_note,
    parse_note,
    process_note,
)
from oncopipe.notes.evaluate import (
    NAME_TEMPLATES,
    leaked_name_parts,
    planted_name_notes,
    read_name_list,
)
from oncopipe.notes.scrub import NAME, safe_words, scrub

DATA = Path(__file__).parents[1] / "data" / "notes"
SECRET = bytes(range(32))
HELD_OUT = read_name_list(DATA / "heldout_names.txt")


def _parts(names: list[str]) -> set[str]:
    return {p for n in names for p in re.findall(r"[^\W\d_]+", n)}


# --- names outside every lexicon ---------------------------------------------------------------


def test_held_out_names_are_many_and_in_no_lexicon_of_the_project() -> None:
    assert len(HELD_OUT) >= 200 and len(set(HELD_OUT)) == len(HELD_OUT)
    lexicons = (
        rules.FIRST_NAMES
        | rules.SURNAMES
        | rules.CLINICAL_WORDS
        | {
            n.lower()
            for n in (
                *sample_people.FIRST_NAMES,
                *sample_people.LAST_NAMES,
                *note_sample.FIRST_NAMES,
                *note_sample.LAST_NAMES,
                *note_sample.DOCTOR_NAMES,
            )
        }
    )
    assert {p.lower() for p in _parts(HELD_OUT)} & lexicons == set()
    # accents, hyphens, apostrophes and particles are all represented
    assert any(not p.isascii() for p in _parts(HELD_OUT))
    assert any("-" in n for n in HELD_OUT) and any("'" in n for n in HELD_OUT)
    assert any(" van der " in n or " de la " in n for n in HELD_OUT)


def test_no_held_out_name_survives_in_any_position() -> None:
    planted = planted_name_notes(HELD_OUT)
    assert len(planted) == len(HELD_OUT) * len(NAME_TEMPLATES)
    leaks = []
    for text, name in planted:
        out = scrub(text, date_shift_days=None).text
        if leaked := leaked_name_parts(name, out):
            leaks.append((name, leaked, out))
    print(f"\nheld-out names: {len(HELD_OUT)}, planted notes: {len(planted)}, leaks: {len(leaks)}")
    assert leaks == []


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Dr. Jörg reviewed the CT.", ["Jörg"]),
        ("François Müller is a 61-year-old man.", ["François", "Müller"]),
        ("Seen with Mr. O'Neill-Ó Briain today.", ["Neill", "Briain"]),
        ("Daughter (Thandolwethu) at bedside.", ["Thandolwethu"]),
        ("Per Wiśniewska, no change in the RUL mass.", ["Wiśniewska"]),
        ("HPI: Mrs Ngozi Okonkwo-Eze is here with her son.", ["Ngozi", "Okonkwo", "Eze"]),
        ("Case discussed with Ana Lucía de la Peña y Ruiz.", ["Lucía", "Peña", "Ruiz"]),
        ("CLINIC NOTE: NGUYỄN THỊ HẠNH\nECOG 1.", ["NGUYỄN", "HẠNH"]),
        ("Regards,\nBjarnheiður Þórsdóttir\nOncology", ["Bjarnheiður", "Þórsdóttir"]),
        ("Spoke with Tiihonen's wife about the plan.", ["Tiihonen"]),
    ],
)
def test_names_found_from_the_structure_of_the_text(text: str, gone: list[str]) -> None:
    out = scrub(text, date_shift_days=None).text
    assert NAME in out
    assert [g for g in gone if g.lower() in out.lower()] == [], out


def test_clinical_words_survive_the_safelist_scrubber() -> None:
    text = (
        "Osimertinib 80 mg daily. Keytruda q3w. Tagrisso held. KRAS G12C, EGFR L858R, STK11, "
        "KEAP1 and PIK3CA. CT Chest: RUL mass. MRI Brain: no mets. PET/CT: FDG avid.\n"
        "PATH: LUNG ADENOCARCINOMA, ACINAR PREDOMINANT. EGFR EXON 19 DELETION. PD-L1 TPS 20%.\n"
        "Hodgkin's lymphoma in 1990. Pancoast tumor with Horner syndrome. Prior Whipple.\n"
        "Plan: Continue Tagrisso. Follow Up in 3 months. Na 134, Ca 9.1.\n"
        "Mother had breast cancer. Today's labs reviewed.\n"
    )
    out = scrub(text, date_shift_days=None).text
    assert NAME not in out, out
    assert out == text


def test_safelist_is_philter_lite_and_clinical_words() -> None:
    words = safe_words()
    assert len(words) > 150_000  # philter-lite's nonames set
    assert {"adenocarcinoma", "pembrolizumab", "lobe", "the"} <= words
    assert rules.CLINICAL_WORDS <= words and rules.EPONYMS <= words
    assert not {"nguyen", "okafor", "müller"} & words


# --- encodings ---------------------------------------------------------------------------------


def test_cp1252_note_is_decoded_and_its_name_scrubbed() -> None:
    text = "Patient-ID: P-1\n\nSeen with François Müller – “stable”. ECOG 1, KRAS G12C.\n"
    result = process_note(text.encode("cp1252"), "n.txt", secret=SECRET, fallback_patient_id=None)
    assert result.encoding == "cp1252" and result.decode_replaced is False
    assert "\ufffd" not in result.text
    assert "François" not in result.text and "Müller" not in result.text
    assert "Fran" not in result.text and "ller" not in result.text  # no half of a name either
    assert "– “stable”. ECOG 1" in result.text
    assert ("biomarker", "KRAS G12C") in {(c.concept, c.value) for c in result.concepts}


@pytest.mark.parametrize(
    ("data", "encoding", "body"),
    [
        ("Dr. Jörg Schäfer\n".encode("latin-1"), "cp1252", "Dr. Jörg Schäfer\n"),
        ("Renée\n".encode() + "Zoë\n".encode("cp1252"), "utf-8+cp1252", "Renée\nZoë\n"),
        (b"ECOG 1 at the caf\xe9 \x81\x9d\n", "cp1252", "ECOG 1 at the café \x81\x9d\n"),
        ("Núria\n".encode("utf-16"), "utf-16", "Núria\n"),
        ("\ufeffÍñigo\n".encode(), "utf-8-sig", "Íñigo\n"),
    ],
)
def test_encodings_are_detected_without_replacement(data: bytes, encoding: str, body: str) -> None:
    text, found = decode_note(data, "n.txt")
    assert (text, found) == (body, encoding)
    note = parse_note(data, "n.txt", fallback_patient_id="P1")
    assert "\ufffd" not in note.body and note.encoding == encoding


def test_a_bom_that_lies_is_a_clear_error() -> None:
    with pytest.raises(NoteInputError) as info:
        parse_note(b"\xff\xfeS\x00E\x00C\x00R\x00E\x00T\x00\x00\xd8", "notes/x.txt")
    assert "notes/x.txt" in str(info.value) and "utf-16" in str(info.value)
    assert "SECRET" not in str(info.value)


# --- size cap and linear time ------------------------------------------------------------------


def test_note_over_the_cap_is_refused_with_its_size_and_no_text() -> None:
    data = b"Patient-ID: P1\n\nSECRETNOTE " + b"ECOG 1. " * 200
    with pytest.raises(NoteTooLargeError) as info:
        process_note(data, "notes/big.txt", secret=SECRET, fallback_patient_id=None, max_bytes=500)
    error = info.value
    assert error.reason_code == "note-too-large"
    assert "notes/big.txt" in str(error) and str(len(data)) in str(error) and "500" in str(error)
    assert "SECRETNOTE" not in str(error)
    assert DEFAULT_MAX_NOTE_BYTES == 1_000_000
    result = process_note(data, "n.txt", secret=SECRET, fallback_patient_id=None)
    assert result.concepts  # under the default cap


def test_nlp_sees_bounded_pieces_and_finds_the_same_concepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = (
        "HPI: stage IV adenocarcinoma, KRAS G12C.\n"
        "FAMILY HISTORY:\n"
        "Sister with small cell lung cancer.\n"
        "Brother had SCLC.\n"
        "Uncle: smoker.\n"
        "PAST MEDICAL HISTORY: SCLC treated with etoposide.\n"
        "PLAN: ECOG 1. Continue osimertinib. If progression, consider docetaxel.\n"
    )
    whole = nlp.extract(text)
    pieces = nlp.chunks(text, 75)  # longer than every line: pieces end at line ends
    assert "".join(p for _, p in pieces) == text
    assert all(len(p) <= 75 and p.endswith("\n") for _, p in pieces) and len(pieces) >= 4
    assert [o for o, _ in pieces] == [0, *[o + len(p) for o, p in pieces[:-1]]]
    monkeypatch.setattr(nlp, "MAX_CHUNK_CHARS", 75)
    docs = nlp._docs(nlp.get_nlp(), text)
    assert len(docs) == len(pieces)
    for (doc, shift), (offset, piece) in zip(docs, pieces, strict=True):
        heading = offset - shift  # the section heading carried in front of the piece
        assert doc.text[heading:] == piece and heading <= 75
    chunked = nlp.extract(text)
    assert chunked == whole  # same rows, offsets, sections and family defaults
    assert {c.experiencer for c in chunked if c.value == "small cell carcinoma"} >= {"family"}
    for c in chunked:
        assert text[c.start : c.end].strip()


def test_chunks_cut_long_lines_at_sentences_then_spaces() -> None:
    line = "No brain mets. " * 40 + "x" * 90
    pieces = nlp.chunks(line, 50)
    assert "".join(p for _, p in pieces) == line and all(len(p) <= 50 for _, p in pieces)
    assert pieces[0][1].endswith(". ")
    with pytest.raises(ValueError):
        nlp.chunks("abc", 1)


@pytest.mark.parametrize(
    "unit",
    ["Aaaa-", "ZHAI-", "a.", "1/", "Aa Aa, ", "de ", "O'Aa", "Dr. ", "ZZZ ", "3/4 ", "Aé-"],
)
def test_scrubber_is_not_catastrophic_on_long_runs(unit: str) -> None:
    # 200 KB of one repeated pattern; linear code takes about a second here, the old email
    # and resolve code took minutes. A generous bound: timings are noisy, quadratic is not.
    text = (unit * (200_000 // len(unit) + 1))[:200_000]
    safe_words()
    started = time.perf_counter()
    scrub(text, date_shift_days=-3)
    assert time.perf_counter() - started < 20


# --- the stage ---------------------------------------------------------------------------------


def test_stage_quarantines_a_note_over_the_cap(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from oncopipe import layout
    from oncopipe.ingest import Router
    from oncopipe.notes.stage import CURATED_SCRUBBED, process_run_notes
    from oncopipe.pseudonym import patient_key
    from oncopipe.storage import ObjectStore
    from tests.conftest import make_bucket

    buckets = layout.Buckets(*(make_bucket(s3, f"b-{n}") for n in ("in", "q", "cur", "art")))
    store = ObjectStore(s3)
    small = b"Patient-ID: P-1\n\nStage IV adenocarcinoma. ECOG 1.\n"
    big = b"Patient-ID: P-2\n\nSECRETNOTE " + b"ECOG 1. " * 400
    run_id = "run-2026-03-14"
    router = Router(store, buckets, patient_key=lambda p: patient_key(SECRET, p), secret=SECRET)
    for name, data in (("Small Note.txt", small), ("Jane Doe.txt", big)):
        s3.put_object(Bucket=buckets.ingest, Key=f"{layout.INGEST_NOTES}{name}", Body=data)
        ref = store.head(buckets.ingest, f"{layout.INGEST_NOTES}{name}")
        assert ref is not None
        router.route(ref, run_id)
    results = {r.item: r.summary for r in process_run_notes(store, buckets, run_id, SECRET,
                                                            max_bytes=2000)}  # fmt: skip
    refused = results[f"{layout.INGEST_NOTES}Jane Doe.txt"]
    assert refused["status"] == "quarantined" and refused["reason_code"] == "note-too-large"
    assert str(len(big)) in refused["reason"] and "SECRETNOTE" not in json.dumps(refused)
    reason_key = layout.quarantine_reason_key(run_id, f"{layout.INGEST_NOTES}Jane Doe.txt")
    reason = json.loads(store.get_bytes(buckets.quarantine, reason_key))
    assert "note-too-large" in json.dumps(reason)
    accepted = results[f"{layout.INGEST_NOTES}Small Note.txt"]
    assert accepted["status"] == "extracted" and accepted["encoding"] == "utf-8"
    scrubbed = list(store.list_keys(buckets.curated, CURATED_SCRUBBED))
    assert scrubbed == [accepted["scrubbed"]]  # nothing of the refused note reached curated


@pytest.mark.parametrize("raw", ["0", "-5", "1MB", "100000001"])
def test_size_cap_setting_is_validated(raw: str) -> None:
    from oncopipe.errors import ConfigError
    from oncopipe.notes.stage import max_bytes_from_env

    assert max_bytes_from_env({}) == DEFAULT_MAX_NOTE_BYTES
    assert max_bytes_from_env({"NOTES_MAX_BYTES": "2048"}) == 2048
    with pytest.raises(ConfigError, match="NOTES_MAX_BYTES"):
        max_bytes_from_env({"NOTES_MAX_BYTES": raw})


def test_generated_note_is_unchanged_by_chunking() -> None:
    import random

    rng = random.Random(11)
    text, _, _ = note_sample.generate_note(
        rng, mrn="MRN-1234567", name="Aiko Tanaka", note_date=date(2026, 3, 1)
    )
    body = scrub(text, date_shift_days=-3).text
    assert nlp.extract_many([body, body * 6]) == [nlp.extract(body), nlp.extract(body * 6)]


def test_processing_job_refuses_a_bad_size_cap_at_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from processing.notes import main

    for name, value in (("INGEST_BUCKET", "i"), ("QUARANTINE_BUCKET", "q"),
                        ("CURATED_BUCKET", "c"), ("ARTIFACTS_BUCKET", "a"),
                        ("NOTES_MAX_BYTES", "1MB")):  # fmt: skip
        monkeypatch.setenv(name, value)
    assert main(["stage", "--run-id", "run-2026-03-14"]) == 2
    assert "NOTES_MAX_BYTES" in capsys.readouterr().err
