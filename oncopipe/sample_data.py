"""The sample cohort: small, generated, with fake PHI and deliberately bad inputs.

Sequencing reads are simulated on the synthetic gene panel
(:mod:`oncopipe.genomics.simulate`) with planted somatic variants at known VAFs
(:data:`PLANTED`), a germline SNP shared by each patient's tumour and normal, and a truth
VCF per tumour sample under ``_truth/``; the panel reference is under ``_reference/``.

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
from datetime import date
from pathlib import Path

from oncopipe import layout
from oncopipe.genomics.simulate import (
    READ_LENGTH,
    Variant,
    make_panel,
    simulate_pair,
    write_fasta,
    write_truth_vcf,
)
from oncopipe.imaging.sample import write_burned_in_ultrasound, write_ct_series
from oncopipe.notes.sample import generate_note
from oncopipe.sample_people import FIRST_NAMES, LAST_NAMES

#: Somatic variants planted per patient (cycled), with their VAF in the tumour.
PLANTED: tuple[tuple[tuple[str, float], ...], ...] = (
    (("KRAS G12C", 0.35), ("TP53 R273H", 0.25)),
    (("EGFR L858R", 0.30),),
    (("BRAF V600E", 0.40), ("PIK3CA H1047R", 0.20)),
)
REFERENCE_DIR = "_reference"
TRUTH_DIR = "_truth"


@dataclass(frozen=True)
class CohortFiles:
    """What was written: keys relative to the output folder (= ingest bucket keys)."""

    root: Path
    data_keys: tuple[str, ...]
    samplesheet_keys: tuple[str, ...]
    patients: int

    @property
    def reference_dir(self) -> Path | None:
        """The panel reference (panel.fa, panel.json), if the cohort has one."""
        path = self.root / REFERENCE_DIR
        return path if (path / "panel.fa").exists() else None

    @property
    def all_keys(self) -> tuple[str, ...]:
        return self.data_keys + self.samplesheet_keys


def _random_pair(rng: random.Random, sample: str, reads: int) -> tuple[bytes, bytes]:
    """A pair of random reads (for the FASTQ that no sample sheet names)."""
    r1, r2 = io.StringIO(), io.StringIO()
    for i in range(1, reads + 1):
        for handle, mate in ((r1, 1), (r2, 2)):
            seq = "".join(rng.choice("ACGT") for _ in range(READ_LENGTH))
            handle.write(f"@{sample}:{i} {mate}:N:0:1\n{seq}\n+\n{'I' * READ_LENGTH}\n")
    return (
        gzip.compress(r1.getvalue().encode("ascii"), mtime=0),
        gzip.compress(r2.getvalue().encode("ascii"), mtime=0),
    )


def generate(out: Path, *, patients: int = 3, depth: int = 80, seed: int = 7) -> CohortFiles:
    """Write the sample cohort under ``out``; return the keys written.

    ``depth`` is the tumour's mean coverage of the panel (the normal gets 60 % of it).

    Raises:
        ValueError: fewer than 1 patient or a depth below 10.
    """
    if patients < 1 or depth < 10:
        raise ValueError("need at least 1 patient and a depth of at least 10")
    rng = random.Random(seed)
    sequences, panel, changes = make_panel()
    reference = out / REFERENCE_DIR
    reference.mkdir(parents=True, exist_ok=True)
    write_fasta(sequences, reference / "panel.fa")
    panel.dump(reference / "panel.json")
    (out / TRUTH_DIR).mkdir(parents=True, exist_ok=True)
    data: dict[str, bytes] = {}
    rows = []
    for p in range(1, patients + 1):
        mrn = f"MRN-{rng.randrange(1_000_000, 9_999_999)}"
        name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        note_key = f"{layout.INGEST_NOTES}patient{p:03d}.txt"
        dicom_prefix = f"{layout.INGEST_DICOM}patient{p:03d}/"
        series = write_ct_series(out / dicom_prefix / "ct", rng, mrn=mrn, name=name,
                                 with_rtstruct=True)  # fmt: skip
        for path in series:
            data[path.relative_to(out).as_posix()] = path.read_bytes()
        note, _, _ = generate_note(rng, mrn=mrn, name=name,
                                   note_date=date(2026, 3, rng.randrange(1, 28)))  # fmt: skip
        data[note_key] = note.encode("utf-8")
        germline_pos = 150 + 37 * p
        contig = list(sequences)[p % len(sequences)]
        base = sequences[contig][germline_pos - 1]
        germline = Variant(contig, germline_pos, base, "A" if base != "A" else "G", 0.5)
        somatic = []
        for name, vaf in PLANTED[(p - 1) % len(PLANTED)]:
            v = changes[name][0]
            somatic.append(Variant(v.contig, v.pos, v.ref, v.alt, vaf, v.gene, v.protein))
        for kind, suffix in (("tumour", "T"), ("normal", "N")):
            sample = f"P{p:03d}-{suffix}"
            fq1 = f"{layout.INGEST_FASTQ}{sample}_R1.fastq.gz"
            fq2 = f"{layout.INGEST_FASTQ}{sample}_R2.fastq.gz"
            variants = [*somatic, germline] if kind == "tumour" else [germline]
            data[fq1], data[fq2] = simulate_pair(
                sequences, variants, sample=sample,
                depth=depth if kind == "tumour" else max(10, depth * 3 // 5),
                seed=seed * 1000 + 2 * p + (kind == "normal"),
            )  # fmt: skip
            if kind == "tumour":
                write_truth_vcf(somatic, sequences, out / TRUTH_DIR / f"{sample}.vcf")
            rows.append(
                {
                    "patient": mrn,
                    "sample": sample,
                    "type": kind,
                    "fastq_1": fq1,
                    "fastq_2": fq2,
                    "notes": note_key if kind == "tumour" else "",
                    "dicom": dicom_prefix if kind == "tumour" else "",
                }
            )
    # Bad inputs, each with its expected reason.
    orphan = f"{layout.INGEST_FASTQ}UNLISTED-T_R1.fastq.gz"
    data[orphan], _ = _random_pair(rng, "UNLISTED-T", 10)  # no sheet names it: no patient
    data["exports/scanner-dump.bin"] = bytes(rng.randrange(256) for _ in range(512))  # unknown
    data[f"{layout.INGEST_NOTES}empty.txt"] = b""  # empty object
    capture = out / layout.INGEST_DICOM / "exports" / "us_capture.dcm"
    write_burned_in_ultrasound(capture, rng, mrn="MRN-0000001", name="Grace Moreau")
    data[capture.relative_to(out).as_posix()] = capture.read_bytes()  # burned-in: refused

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
    keys = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith("_")
    )
    sheets = tuple(k for k in keys if k.startswith(layout.INGEST_SAMPLESHEETS))
    return CohortFiles(
        root=root,
        data_keys=tuple(k for k in keys if k not in sheets),
        samplesheet_keys=sheets,
        patients=0,
    )
