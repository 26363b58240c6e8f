"""Synthetic thoracic-oncology notes with gold concepts and planted PHI.

:func:`generate_note` writes one note (with the ``Patient-ID``/``Note-Date`` header) from a
:class:`NoteProfile`: the facts a note states (histology, stage, ECOG, biomarkers, smoking,
metastases, therapies). Fields left None are drawn at random, so a caller can force only what a
downstream label depends on (``NoteProfile(ecog=1, biomarkers=("KRAS G12C",))``). Each fact is
written with one of several phrasings (abbreviations, negations, family history, hypothetical
and historical therapy), and the note carries PHI in several forms (names, MRN, phone, fax,
e-mail, URL, street address, dates in seven formats, sometimes an age over 89). The function
returns the gold concepts (matched by concept, value, negated, experiencer; see
:mod:`oncopipe.notes.evaluate`) and the planted PHI strings a scrubber must remove.

Names should come from :data:`FIRST_NAMES`/:data:`LAST_NAMES` (they include
``oncopipe.sample_people``'s), all of them in the scrubber's lexicon; doctors' surnames are partly
outside it and always follow "Dr." or precede ", MD".
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import date, timedelta

from oncopipe import sample_people

FIRST_NAMES: tuple[str, ...] = (
    *sample_people.FIRST_NAMES,
    *("Linda", "James", "Priya", "Kenji", "Sofia", "Ahmed", "Ingrid", "Carlos", "Helen", "Walter"),
)
LAST_NAMES: tuple[str, ...] = (
    *sample_people.LAST_NAMES,
    *("Nguyen", "Patel", "Okonjo", "Schmidt", "Rossi", "Kowalski", "Hansen", "Mendoza", "Sato"),
)
#: Doctors' surnames; several are outside the scrubber's lexicon on purpose.
DOCTOR_NAMES = (
    "Whitcombe",
    "Abernethy",
    "Farrowdale",
    "Quintero",
    "Castellano",
    "Nakashima",
    "Brennan",
    "Ellery",
    "Okafor",
    "Lindgren",
)

HISTOLOGY_FORMS: dict[str, tuple[str, ...]] = {
    "adenocarcinoma": (
        "adenocarcinoma of the lung",
        "lung adenocarcinoma",
        "adenoca of the {lobe}",
        "NSCLC (adenocarcinoma)",
    ),
    "squamous cell carcinoma": (
        "squamous cell carcinoma of the lung",
        "squamous cell lung cancer",
        "SCC of the {lobe}",
    ),
    "small cell carcinoma": ("small cell lung cancer", "SCLC", "small cell carcinoma of the lung"),
    "non-small cell carcinoma": (
        "non-small cell lung cancer",
        "NSCLC",
        "non-small cell lung carcinoma",
    ),
    "large cell carcinoma": ("large cell carcinoma of the lung", "large cell lung cancer"),
}
STAGES = ("IA", "IB", "IIA", "IIB", "IIIA", "IIIB", "IIIC", "IV", "IVA", "IVB")
_TNM = {
    "IA": "cT1bN0M0",
    "IB": "cT2aN0M0",
    "IIA": "cT2bN0M0",
    "IIB": "cT1cN1M0",
    "IIIA": "cT2aN2M0",
    "IIIB": "cT3N2M0",
    "IIIC": "cT4N3M0",
    "IV": "cT2N1M1a",
    "IVA": "cT3N1M1b",
    "IVB": "cT4N2M1c",
}
_ARABIC = {"I": "1", "II": "2", "III": "3", "IV": "4"}

BIOMARKER_FORMS: dict[str, tuple[str, ...]] = {
    "KRAS G12C": ("a KRAS G12C mutation", "KRAS p.G12C", "KRAS G12C"),
    "KRAS G12D": ("a KRAS G12D mutation",),
    "EGFR L858R": ("an EGFR L858R mutation", "EGFR exon 21 L858R"),
    "EGFR exon 19 deletion": ("an EGFR exon 19 deletion", "EGFR ex19del"),
    "EGFR T790M": ("EGFR T790M",),
    "ALK fusion": ("an ALK rearrangement", "an EML4-ALK fusion", "ALK-positive disease"),
    "ROS1 fusion": ("a ROS1 fusion", "a ROS1 rearrangement", "a CD74-ROS1 fusion"),
    "BRAF V600E": ("a BRAF V600E mutation", "BRAF V600E"),
    "MET exon 14 skipping": ("a MET exon 14 skipping mutation", "MET exon 14 skipping"),
    "RET fusion": ("a RET fusion", "a KIF5B-RET fusion"),
    "TP53 R273H": ("TP53 R273H",),
    "PIK3CA H1047R": ("PIK3CA H1047R",),
    "HER2 exon 20 insertion": ("a HER2 exon 20 insertion",),
    "STK11 loss": ("STK11 loss",),
}
#: gene -> (gold value of a negative result, phrasings)
NEGATIVE_FORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "EGFR": (
        "EGFR mutation",
        ("no EGFR mutation", "EGFR wild-type", "negative for EGFR mutations"),
    ),
    "KRAS": ("KRAS mutation", ("KRAS wild-type", "no KRAS mutation")),
    "ALK": ("ALK fusion", ("negative for ALK rearrangement", "ALK negative", "no ALK fusion")),
    "ROS1": ("ROS1 fusion", ("ROS1 negative", "no ROS1 fusion")),
    "BRAF": ("BRAF mutation", ("BRAF wild-type",)),
}
_DRIVER_THERAPY = {
    "KRAS G12C": ("sotorasib", "adagrasib"),
    "EGFR L858R": ("osimertinib",),
    "EGFR exon 19 deletion": ("osimertinib",),
    "ALK fusion": ("alectinib", "lorlatinib"),
    "ROS1 fusion": ("crizotinib", "entrectinib"),
    "BRAF V600E": ("dabrafenib",),
    "MET exon 14 skipping": ("capmatinib", "tepotinib"),
    "RET fusion": ("selpercatinib",),
}
_CHEMO_IO = {
    "squamous cell carcinoma": ("carboplatin", "paclitaxel", "pembrolizumab"),
    "small cell carcinoma": ("carboplatin", "etoposide", "atezolizumab"),
}
_DEFAULT_CHEMO_IO = ("carboplatin", "pemetrexed", "pembrolizumab")
BRANDS = {
    "pembrolizumab": "Keytruda",
    "osimertinib": "Tagrisso",
    "nivolumab": "Opdivo",
    "atezolizumab": "Tecentriq",
    "durvalumab": "Imfinzi",
    "sotorasib": "Lumakras",
    "adagrasib": "Krazati",
    "alectinib": "Alecensa",
    "crizotinib": "Xalkori",
    "pemetrexed": "Alimta",
    "paclitaxel": "Taxol",
    "lorlatinib": "Lorbrena",
    "selpercatinib": "Retevmo",
    "capmatinib": "Tabrecta",
    "docetaxel": "Taxotere",
}
_SECOND_LINE = ("docetaxel", "gemcitabine", "nivolumab", "ramucirumab", "vinorelbine")
METASTASIS_SITES = ("brain", "liver", "bone", "adrenal", "pleura", "lymph node")
_SITE_FORMS = {
    "brain": ("brain metastases", "multiple brain mets", "a brain metastasis"),
    "liver": ("liver metastases", "hepatic mets"),
    "bone": ("osseous metastases", "bone mets", "mets to bone"),
    "adrenal": ("an adrenal met", "a left adrenal metastasis"),
    "pleura": ("a malignant pleural effusion",),
    "lymph node": ("nodal metastases",),
}
_SITE_SENTENCE = {
    "liver": "Disease is metastatic to the liver.",
    "bone": "Disease is metastatic to bone.",
    "adrenal": "Disease is metastatic to the left adrenal gland.",
}
_FAMILY = (
    ("Mother had breast cancer.", ()),
    (
        "Father with lung adenocarcinoma, smoker.",
        (("histology", "adenocarcinoma"), ("smoking", "current")),
    ),
    ("Sister with small cell lung cancer.", (("histology", "small cell carcinoma"),)),
    ("Brother had SCLC.", (("histology", "small cell carcinoma"),)),
    (
        "Maternal uncle with squamous cell carcinoma of the lung.",
        (("histology", "squamous cell carcinoma"),),
    ),
    ("No family history of lung cancer.", ()),
)
_STREETS = ("Oak", "Maple", "Cedar", "Elm", "Lincoln", "Harbor", "Pine", "Chestnut", "Beacon")
_SUFFIXES = ("Street", "St", "Avenue", "Ave", "Road", "Rd", "Lane", "Drive", "Dr", "Boulevard")
_CITIES = ("Springfield", "Riverton", "Fairview", "Lakeside", "Georgetown", "Greenville", "Milford")
_STATES = ("MA", "NY", "CA", "TX", "OH", "IL", "WA", "PA")
_LOBES = (
    "right upper lobe",
    "right lower lobe",
    "left upper lobe",
    "left lower lobe",
    "RUL",
    "LLL",
)


@dataclass(frozen=True)
class GoldConcept:
    """A fact the note states; matched by (concept, value, negated, experiencer, numeric)."""

    concept: str
    value: str | None
    numeric_value: float | None = None
    negated: bool = False
    experiencer: str = "patient"
    temporality: str = "current"


@dataclass(frozen=True)
class NoteProfile:
    """Facts to write into a note; None fields are drawn at random.

    ``biomarkers`` are the positive alterations (``BIOMARKER_FORMS`` keys), ``pdl1`` a
    percentage (0 is written "<1%"), ``metastases`` sites of ``METASTASIS_SITES`` (an empty tuple
    writes "no evidence of metastatic disease"), ``therapies`` the current generic drugs.
    """

    histology: str | None = None
    stage: str | None = None
    ecog: int | None = None
    biomarkers: tuple[str, ...] | None = None
    pdl1: float | None = None
    smoking: str | None = None
    pack_years: int | None = None
    metastases: tuple[str, ...] | None = None
    therapies: tuple[str, ...] | None = None


@dataclass
class _Note:
    rng: random.Random
    gold: list[GoldConcept] = field(default_factory=list)
    phi: list[str] = field(default_factory=list)

    def fact(
        self, concept: str, value: str | None, numeric: float | None = None, **kw: object
    ) -> None:
        self.gold.append(GoldConcept(concept, value, numeric, **kw))  # type: ignore[arg-type]

    def pick(self, options: tuple[str, ...] | list[str]) -> str:
        return self.rng.choice(list(options))


def _write_date(rng: random.Random, value: date) -> str:
    """Write a date in one of seven formats."""
    month = value.strftime("%B")
    return rng.choice(
        (
            value.isoformat(),
            f"{value.month:02d}/{value.day:02d}/{value.year}",
            f"{value.month}/{value.day}/{value.year % 100:02d}",
            f"{value.day:02d}.{value.month:02d}.{value.year}",
            f"{month} {value.day}, {value.year}",
            f"{value.day} {month[:3]} {value.year}",
            f"{month[:3]} {value.year}",
        )
    )


def _draw_profile(rng: random.Random, p: NoteProfile) -> NoteProfile:
    histology = p.histology or rng.choice(list(HISTOLOGY_FORMS))
    metastases = p.metastases
    if metastases is None:
        metastases = tuple(rng.sample(METASTASIS_SITES, rng.choice((0, 0, 1, 1, 2, 3))))
    stage = p.stage or rng.choice(STAGES[7:] if metastases else STAGES[:7])
    biomarkers = p.biomarkers
    if biomarkers is None:
        drivers = [b for b in _DRIVER_THERAPY if not b.startswith("KRAS")] + ["KRAS G12C"] * 3
        biomarkers = () if histology == "small cell carcinoma" else (rng.choice(drivers),)
        if rng.random() < 0.3:
            biomarkers += (rng.choice(("TP53 R273H", "PIK3CA H1047R", "STK11 loss")),)
    therapies = p.therapies
    if therapies is None:
        driver = next((b for b in biomarkers if b in _DRIVER_THERAPY), None)
        therapies = (
            (rng.choice(_DRIVER_THERAPY[driver]),)
            if driver
            else _CHEMO_IO.get(histology, _DEFAULT_CHEMO_IO)
        )
    smoking = p.smoking or rng.choice(("current", "former", "former", "never"))
    pack_years = p.pack_years
    if pack_years is None and smoking != "never":
        pack_years = rng.randrange(5, 80)
    return NoteProfile(
        histology=histology,
        stage=stage,
        ecog=p.ecog if p.ecog is not None else rng.choice((0, 1, 1, 2, 3)),
        biomarkers=biomarkers,
        pdl1=p.pdl1 if p.pdl1 is not None else rng.choice((0, 5, 30, 50, 80, 95)),
        smoking=smoking,
        pack_years=pack_years,
        metastases=metastases,
        therapies=therapies,
    )


def _histology(n: _Note, histology: str) -> str:
    text = n.pick(HISTOLOGY_FORMS[histology]).replace("{lobe}", n.pick(_LOBES))
    n.fact("histology", histology)
    if text.startswith("NSCLC ("):
        n.fact("histology", "non-small cell carcinoma")
    return text


def _stage(n: _Note, stage: str) -> str:
    roman, letter = re.fullmatch(r"(IV|I{1,3})([ABC]?)", stage).groups()  # type: ignore[union-attr]
    n.fact("stage", stage)
    forms = [f"stage {stage}", f"stage {_ARABIC[roman]}{letter}"]
    if stage == "IV":
        forms.append("stage four")
    if n.rng.random() < 0.4:
        tnm = _TNM[stage]
        n.fact("stage", tnm)
        written = n.pick([tnm, re.sub(r"(?<=\d|[a-d])(?=[NM])", " ", tnm)])
        return f"clinical stage {stage} ({written})"
    return n.pick(forms)


def _molecular(n: _Note, profile: NoteProfile) -> list[str]:
    sentences = []
    positives = list(profile.biomarkers or ())
    if positives:
        phrases = []
        for value in positives:
            phrases.append(n.pick(BIOMARKER_FORMS[value]))
            n.fact("biomarker", value)
        lead = n.pick(("Next-generation sequencing showed", "NGS revealed", "Molecular testing:"))
        sentences.append(f"{lead} {', '.join(phrases)}.")
    genes = {v.split()[0] for v in positives}
    negatives = [g for g in NEGATIVE_FORMS if g not in genes]
    chosen = n.rng.sample(negatives, k=min(len(negatives), n.rng.choice((0, 1, 2, 3))))
    if len(chosen) >= 2 and n.rng.random() < 0.3:
        sentences.append("/".join(chosen) + " negative.")
        for gene in chosen:
            n.fact("biomarker", NEGATIVE_FORMS[gene][0], negated=True)
    elif chosen:
        parts = []
        for gene in chosen:
            value, forms = NEGATIVE_FORMS[gene]
            parts.append(n.pick(forms))
            n.fact("biomarker", value, negated=True)
        text = "; ".join(parts)
        sentences.append(text[0].upper() + text[1:] + ".")
    pdl1 = profile.pdl1
    if pdl1 is not None:
        if pdl1 == 0:
            text = n.pick(("PD-L1 <1%", "PD-L1 TPS <1%"))
        else:
            text = n.pick(
                (
                    f"PD-L1 TPS {pdl1:g}%",
                    f"PD-L1 expression of {pdl1:g} %",
                    f"PD-L1 (22C3) tumor proportion score {pdl1:g}%",
                )
            )
        n.fact("biomarker", "PD-L1", float(pdl1))
        sentences.append(text + ".")
    return sentences


def _imaging(n: _Note, sites: tuple[str, ...], scan: str) -> list[str]:
    sentences = []
    listed = [s for s in sites if not (s in _SITE_SENTENCE and n.rng.random() < 0.3)]
    if listed:
        phrases = [n.pick(_SITE_FORMS[s]) for s in listed]
        joined = (
            phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        )
        sentences.append(f"CT chest, abdomen and pelvis on {scan} shows {joined}.")
    for site in sites:
        n.fact("metastasis", site)
        if site not in listed:
            sentences.append(_SITE_SENTENCE[site])
    if not sites:
        sentences.append(
            n.pick(
                ("No evidence of metastatic disease.", "Staging PET-CT without distant metastases.")
            )
        )
        n.fact("metastasis", "any", negated=True)
    if "brain" not in sites and n.rng.random() < 0.6:
        sentences.append(
            n.pick(
                (
                    "MRI brain negative for brain metastases.",
                    "Negative for brain metastases on MRI.",
                    "No brain mets.",
                )
            )
        )
        n.fact("metastasis", "brain", negated=True)
    if "liver" not in sites and sites and n.rng.random() < 0.3:
        sentences.append("No liver mets.")
        n.fact("metastasis", "liver", negated=True)
    return sentences


def _smoking(n: _Note, status: str, pack_years: int | None, pronoun: str) -> str:
    year = n.rng.randrange(1990, 2024)
    if status == "never":
        n.fact("smoking", "never")
        return n.pick(
            (
                "Never smoker.",
                "Lifelong nonsmoker.",
                f"{pronoun} is a never-smoker.",
                "Denies tobacco use.",
            )
        )
    py = pack_years or 20
    n.fact("smoking", status, float(py))
    if status == "former":
        return n.pick(
            (
                f"Former smoker with a {py} pack-year history, quit in {year}.",
                f"Ex-smoker, {py} PY, quit smoking in {year}.",
                f"Quit smoking in {year} after {py} pack-years.",
            )
        )
    return n.pick(
        (
            f"Current smoker, {py} pack-years.",
            f"Smokes 1 ppd ({py} PY).",
            f"Active smoker with a {py} pack-year history.",
        )
    )


def _family(n: _Note) -> list[str]:
    sentences = []
    for text, facts in n.rng.sample(_FAMILY, k=n.rng.choice((1, 2))):
        sentences.append(text)
        for concept, value in facts:
            n.fact(concept, value, experiencer="family")
    return sentences


def _therapy_name(n: _Note, generic: str) -> str:
    return BRANDS[generic] if generic in BRANDS and n.rng.random() < 0.4 else generic


def _plan(n: _Note, profile: NoteProfile, first: str, start: str) -> list[str]:
    therapies = list(profile.therapies or ())
    sentences = []
    ecog = profile.ecog
    if ecog is not None:
        sentences.append(
            n.pick(
                (
                    f"ECOG {ecog}.",
                    f"ECOG PS {ecog}.",
                    f"ECOG performance status: {ecog}.",
                    f"Performance status {ecog}.",
                    f"ECOG PS of {ecog}.",
                )
            )
        )
        n.fact("ecog", str(ecog), float(ecog))
    if therapies:
        names = [_therapy_name(n, t) for t in therapies]
        joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        sentences.append(
            n.pick(
                (
                    f"Plan: start {joined}.",
                    f"Continue {joined}.",
                    f"Started {joined} on {start}.",
                    f"Currently on {joined}.",
                )
            )
        )
        for t in therapies:
            n.fact("therapy", t)
    if n.rng.random() < 0.3:
        pair = n.rng.sample(("carboplatin", "cisplatin", "pemetrexed", "paclitaxel"), 2)
        pair = [p for p in pair if p not in therapies] or ["cisplatin"]
        sentences.append(f"Previously received 4 cycles of {' and '.join(pair)}.")
        for t in pair:
            n.fact("therapy", t, temporality="historical")
    later = [t for t in _SECOND_LINE if t not in therapies]
    if n.rng.random() < 0.6:
        drug = n.pick(later)
        sentences.append(
            n.pick(
                (f"If progression, consider {drug}.", f"At progression, {drug} would be an option.")
            )
        )
        n.fact("therapy", drug, temporality="hypothetical")
    elif n.rng.random() < 0.3:
        drug = n.pick(later)
        sentences.append(f"Declined {drug}.")
        n.fact("therapy", drug, negated=True)
    sentences.append(f"{first} tolerated the last cycle well.")
    return sentences


def generate_note(
    rng: random.Random,
    *,
    mrn: str,
    name: str,
    note_date: date,
    profile: NoteProfile | None = None,
) -> tuple[str, list[GoldConcept], list[str]]:
    """Return a note's text, its gold concepts and the PHI strings planted in it.

    ``name`` is "First Last"; ``mrn`` goes into the header and, in several forms, the text.
    """
    n = _Note(rng)
    p = _draw_profile(rng, profile or NoteProfile())
    first, last = name.split()[0], name.split()[-1]
    female = rng.random() < 0.5
    pronoun, sex, title = ("She", "woman", "Ms.") if female else ("He", "man", "Mr.")
    digits = re.sub(r"\D", "", mrn) or mrn
    dob = note_date - timedelta(days=rng.randrange(45 * 365, 85 * 365))
    dx = note_date - timedelta(days=rng.randrange(30, 700))
    scan = note_date - timedelta(days=rng.randrange(3, 25))
    start = note_date - timedelta(days=rng.randrange(7, 120))
    dob_text, dx_text, scan_text, start_text = (_write_date(rng, d) for d in (dob, dx, scan, start))
    old = rng.random() < 0.12
    years = rng.randrange(90, 100) if old else rng.randrange(45, 86)
    age_text = rng.choice((f"{years}-year-old", f"{years} yo", f"{years} y/o", f"age {years}"))
    phone_tail = f"{rng.randrange(100, 10000):04d}"
    phone = rng.choice(
        (
            f"(617) 555-{phone_tail}",
            f"617-555-{phone_tail}",
            f"+1 617 555 {phone_tail}",
            f"555-{phone_tail}",
        )
    )
    fax = f"617.555.{rng.randrange(1000, 10000)}"
    email = f"{first.lower()}.{last.lower()}{rng.randrange(1, 99)}@example.org"
    url = rng.choice(
        (
            f"https://portal.example-health.org/patients/{rng.randrange(10**6, 10**7)}",
            f"www.example-health.org/chart/{rng.randrange(1000, 99999)}",
        )
    )
    street = f"{rng.randrange(2, 9999)} {rng.choice(_STREETS)} {rng.choice(_SUFFIXES)}"
    city, zip_code = rng.choice(_CITIES), f"{rng.randrange(1000, 99999):05d}"
    address = f"{street}, {city}, {rng.choice(_STATES)} {zip_code}"
    doctor = rng.choice(DOCTOR_NAMES)
    doctor_first = rng.choice(FIRST_NAMES)
    account = str(rng.randrange(10**6, 10**8))
    n.phi += [
        name,
        first,
        last,
        mrn,
        digits,
        dob_text,
        dx_text,
        scan_text,
        start_text,
        phone,
        fax,
        email,
        url,
        street,
        city,
        zip_code,
        doctor,
        doctor_first,
        account,
    ]
    if old:
        n.phi.append(age_text)

    name_line = rng.choice(
        (
            f"Name: {first} {last}",
            f"Patient: {last.upper()}, {first.upper()}",
            f"Pt name: {first} {last}",
        )
    )
    mrn_line = rng.choice((f"MRN: {digits}", f"MRN {mrn}", f"Medical record number: {digits}"))
    who = rng.choice((f"{first} {last}", f"{title} {last}"))
    histology = _histology(n, p.histology or "adenocarcinoma")
    stage = _stage(n, p.stage or "IV")
    if age_text.startswith("age"):
        hpi = f"{who}, {age_text}, presents with {histology}, {stage}, diagnosed on {dx_text}."
    else:
        hpi = f"{who} is a {age_text} {sex} with {histology}, {stage}, diagnosed on {dx_text}."
    lines = [
        f"Patient-ID: {mrn}",
        f"Note-Date: {note_date.isoformat()}",
        "",
        rng.choice(
            (
                "THORACIC ONCOLOGY CLINIC NOTE",
                "Oncology Progress Note",
                "Thoracic Oncology Consultation",
            )
        ),
        f"{name_line}    DOB: {dob_text}    {mrn_line}    Acct #: {account}",
        f"Referring: Dr. {doctor}",
        "",
        rng.choice(("HISTORY OF PRESENT ILLNESS:", "HPI:", "HISTORY:")) + " " + hpi,
        "PAST MEDICAL HISTORY: COPD, hypertension, type 2 diabetes.",
        rng.choice(("PATHOLOGY:", "MOLECULAR:", "Pathology:")) + " " + " ".join(_molecular(n, p)),
        rng.choice(("IMAGING:", "Imaging:", "RADIOLOGY:"))
        + " "
        + " ".join(_imaging(n, p.metastases or (), scan_text)),
        rng.choice(("SOCIAL HISTORY:", "Social History:", "SHx:"))
        + " "
        + _smoking(n, p.smoking or "never", p.pack_years, pronoun)
        + rng.choice((f" Lives at {address}.", f" Address: {address}.")),
        rng.choice(("FAMILY HISTORY:", "Family History:", "FHx:")) + " " + " ".join(_family(n)),
        rng.choice(("ASSESSMENT AND PLAN:", "A/P:", "Assessment/Plan:"))
        + " "
        + " ".join(_plan(n, p, first, start_text)),
        f"Contact: {phone}. Fax {fax}. Email: {email}. Patient portal: {url}.",
        f"{doctor_first} {doctor}, MD",
    ]
    return "\n".join(lines) + "\n", n.gold, n.phi
