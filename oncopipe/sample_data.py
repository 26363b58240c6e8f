"""The sample cohort: small, generated, with fake PHI and deliberately bad inputs.

``oncopipe sample-data --out DIR`` writes a tree that mirrors the ingest bucket's layout
(:mod:`oncopipe.layout`): FASTQ pairs per tumour/normal sample, a clinical note per
patient, a valid sample sheet, and the bad inputs every deployment meets — a broken
sample sheet, a file under no known prefix, a FASTQ no sheet names, an empty note.
Identifiers and names are invented; they look like PHI so that scrubbing is exercised.
Everything is derived from the seed: the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from dataclasses import dataclass
from pathlib import Path

from oncopipe import layout

READ_LENGTH = 100
FIRST_NAMES = ("Maria", "John", "Aiko", "Lars", "Fatima", "Pedro", "Grace", "Omar")
LAST_NAMES = (
    "Keller",
    "Okafor",
    "Tanaka",
    "Lindqvist",
    "Haddad",
    "Silva",
    "Moreau",
    "Ivanova",
)


@dataclass(frozen=True)
class CohortFiles:
    """What was written: keys relative to the output folder (= ingest bucket keys)."""

    root: Path
    data_keys: tuple[str, ...]
    samplesheet_keys: tuple[str, ...]
    patients: int

    @property
    def all_keys(self) -> tuple[str, ...]:
        return self.data_keys + self.samplesheet_keys


def _fastq_pair(rng: random.Random, sample: str, reads: int) -> tuple[bytes, bytes]:
    r1, r2 = io.StringIO(), io.StringIO()
    for i in range(1, reads + 1):
        name = f"{sample}:1:FC01:1:{1100 + i // 50}:{rng.randrange(1000, 30000)}:{i}"
        for handle, mate in ((r1, 1), (r2, 2)):
            seq = "".join(rng.choice("ACGT") for _ in range(READ_LENGTH))
            qual = "".join(chr(33 + rng.randrange(25, 41)) for _ in range(READ_LENGTH))
            handle.write(f"@{name} {mate}:N:0:1\n{seq}\n+\n{qual}\n")
    # mtime=0: the same seed gives byte-identical files.
    return (
        gzip.compress(r1.getvalue().encode("ascii"), mtime=0),
        gzip.compress(r2.getvalue().encode("ascii"), mtime=0),
    )


def _note(rng: random.Random, mrn: str, name: str) -> str:
    ecog = rng.choice((0, 1, 1, 2))
    day = rng.randrange(1, 28)
    return (
        f"Patient-ID: {mrn}\n"
        f"Note-Date: 2026-03-{day:02d}\n"
        "\n"
        f"HISTORY: {name} is a {rng.randrange(45, 80)}-year-old with a new lung mass. "
        f"Contact: 555-01{rng.randrange(10, 99)}.\n"
        "ASSESSMENT AND PLAN: Stage IIIA adenocarcinoma of the lung. "
        f"ECOG {ecog}. No evidence of brain metastasis. "
        "Mother had breast cancer. Plan: molecular profiling of tumour and normal.\n"
    )


def generate(out: Path, *, patients: int = 3, reads: int = 200, seed: int = 7) -> CohortFiles:
    """Write the sample cohort under ``out``; return the keys written.

    Raises:
        ValueError: fewer than 1 patient or fewer than 1 read.
    """
    if patients < 1 or reads < 1:
        raise ValueError("need at least 1 patient and 1 read per sample")
    rng = random.Random(seed)
    data: dict[str, bytes] = {}
    rows = []
    for p in range(1, patients + 1):
        mrn = f"MRN-{rng.randrange(1_000_000, 9_999_999)}"
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        note_key = f"{layout.INGEST_NOTES}patient{p:03d}.txt"
        data[note_key] = _note(rng, mrn, name).encode("utf-8")
        for kind, suffix in (("tumour", "T"), ("normal", "N")):
            sample = f"P{p:03d}-{suffix}"
            fq1 = f"{layout.INGEST_FASTQ}{sample}_R1.fastq.gz"
            fq2 = f"{layout.INGEST_FASTQ}{sample}_R2.fastq.gz"
            data[fq1], data[fq2] = _fastq_pair(rng, sample, reads)
            rows.append(
                {
                    "patient": mrn,
                    "sample": sample,
                    "type": kind,
                    "fastq_1": fq1,
                    "fastq_2": fq2,
                    "notes": note_key if kind == "tumour" else "",
                }
            )
    # Bad inputs, each with its expected reason.
    orphan = f"{layout.INGEST_FASTQ}UNLISTED-T_R1.fastq.gz"
    data[orphan], _ = _fastq_pair(rng, "UNLISTED-T", 10)  # no sheet names it: no patient
    data["exports/scanner-dump.bin"] = bytes(rng.randrange(256) for _ in range(512))  # unknown
    data[f"{layout.INGEST_NOTES}empty.txt"] = b""  # empty object

    sheet = io.StringIO()
    writer = csv.DictWriter(sheet, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # A sheet with one problem per row (a complete header, so every row is checked).
    broken = io.StringIO()
    bad = csv.DictWriter(broken, fieldnames=list(rows[0]), lineterminator="\n")
    bad.writeheader()
    first = rows[0]
    bad.writerow({**first, "type": "tumor"})  # valid on its own...
    bad.writerow({**first, "fastq_1": rows[1]["fastq_1"], "fastq_2": rows[1]["fastq_2"]})  # dup
    bad.writerow(
        {
            **first,
            "sample": "P900-T",
            "type": "metastasis",
            "fastq_1": "fastq/P900-T_R1.fastq.gz",
            "fastq_2": "fastq/P900-T_R2.fastq.gz",
        }
    )
    bad.writerow(
        {
            **first,
            "patient": "",
            "sample": "P901-N",
            "type": "normal",
            "fastq_1": "fastq/missing_R1.fastq.gz",
            "fastq_2": "fastq/missing_R2.fastq.gz",
        }
    )
    sheets = {
        f"{layout.INGEST_SAMPLESHEETS}cohort.csv": sheet.getvalue().encode("utf-8"),
        f"{layout.INGEST_SAMPLESHEETS}broken.csv": broken.getvalue().encode("utf-8"),
    }
    for key, body in {**data, **sheets}.items():
        path = out / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return CohortFiles(
        root=out,
        data_keys=tuple(sorted(data)),
        samplesheet_keys=tuple(sorted(sheets)),
        patients=patients,
    )


def scan(root: Path) -> CohortFiles:
    """Return the files of an existing cohort folder (sample sheets uploaded last)."""
    keys = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    sheets = tuple(k for k in keys if k.startswith(layout.INGEST_SAMPLESHEETS))
    return CohortFiles(
        root=root,
        data_keys=tuple(k for k in keys if k not in sheets),
        samplesheet_keys=sheets,
        patients=0,
    )
