"""Synthetic panel, paired reads with planted variants at known VAFs, and a truth VCF.

The panel's contigs are synthetic: random flanks around a coding window of each gene
whose hotspot codons carry the reference amino acid, so the real hotspot names apply
(KRAS G12C is codon 12, GGT -> TGT, here too). Reads are drawn from fragments of normal
insert size; each fragment carries a planted allele with the probability of its VAF, and
bases get random sequencing errors. Everything derives from the seed.
"""

from __future__ import annotations

import gzip
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from oncopipe.genomics.panel import CODON_TABLE, Gene, Panel, translate

FLANK = 300
WINDOW = 40  # codons each side of the hotspots
READ_LENGTH = 100
INSERT_MEAN, INSERT_SD = 300, 30
ERROR_RATE = 0.002
_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")

#: Public hotspot facts (gene, codon, reference and alternative amino acid).
HOTSPOTS: dict[str, list[tuple[int, str, str]]] = {
    "KRAS": [(12, "G", "C"), (12, "G", "D")],
    "EGFR": [(858, "L", "R")],
    "BRAF": [(600, "V", "E")],
    "PIK3CA": [(545, "E", "K"), (1047, "H", "R")],
    "TP53": [(273, "R", "H")],
    "NRAS": [(61, "Q", "K")],
    "ALK": [(1174, "F", "L")],
    "ERBB2": [(310, "S", "F")],
    "STK11": [(37, "Q", "*")],
    "MET": [(1010, "T", "I")],
}


@dataclass(frozen=True)
class Variant:
    contig: str
    pos: int  # 1-based
    ref: str
    alt: str
    vaf: float
    gene: str = ""
    protein: str = ""


def _codon_for(amino: str, rng: random.Random) -> str:
    return rng.choice(sorted(c for c, a in CODON_TABLE.items() if a == amino))


def _sense_codon(rng: random.Random) -> str:
    return rng.choice(sorted(c for c, a in CODON_TABLE.items() if a != "*"))


def make_panel(seed: int = 11) -> tuple[dict[str, str], Panel, dict[str, list[Variant]]]:
    """Return (contig sequences, panel annotation, the SNV for each named hotspot).

    For every hotspot the reference codon is chosen so that one base change gives the
    alternative amino acid; that change is the planted variant.
    """
    rng = random.Random(seed)
    sequences: dict[str, str] = {}
    genes: list[Gene] = []
    changes: dict[str, list[Variant]] = {}
    for gene, spots in HOTSPOTS.items():
        first = max(1, min(c for c, _, _ in spots) - WINDOW)
        last = max(c for c, _, _ in spots) + WINDOW
        codons = [_sense_codon(rng) for _ in range(first, last + 1)]
        for codon_number, ref_aa, alt_aa in spots:
            index = codon_number - first
            # a reference codon with a one-base change to the alternative amino acid
            options = []
            for candidate in sorted(c for c, a in CODON_TABLE.items() if a == ref_aa):
                for offset in range(3):
                    for base in "ACGT":
                        mutated = candidate[:offset] + base + candidate[offset + 1 :]
                        if base != candidate[offset] and translate(mutated) == alt_aa:
                            options.append((candidate, offset, base))
            if index < len(codons) and codons[index] in {o[0] for o in options}:
                options = [o for o in options if o[0] == codons[index]]
            codon, offset, base = rng.choice(options)
            codons[index] = codon
        left = "".join(rng.choice("ACGT") for _ in range(FLANK))
        right = "".join(rng.choice("ACGT") for _ in range(FLANK))
        sequences[gene] = left + "".join(codons) + right
        cds_start = FLANK + 1
        genes.append(
            Gene(
                gene=gene,
                contig=gene,
                cds_start=cds_start,
                first_codon=first,
                cds_end=cds_start + 3 * len(codons) - 1,
                hotspots={c: f"{r}{c}{a}" for c, r, a in spots},
            )
        )
    panel = Panel(genes=tuple(genes))
    for entry in panel.genes:
        for codon_number, ref_aa, alt_aa in HOTSPOTS[entry.gene]:
            start = entry.cds_start + 3 * (codon_number - entry.first_codon)  # 1-based
            codon = sequences[entry.contig][start - 1 : start + 2]
            for offset in range(3):
                for base in "ACGT":
                    if base == codon[offset]:
                        continue
                    mutated = codon[:offset] + base + codon[offset + 1 :]
                    if translate(mutated) == alt_aa:
                        name = f"{entry.gene} {ref_aa}{codon_number}{alt_aa}"
                        changes.setdefault(name, []).append(
                            Variant(entry.contig, start + offset, codon[offset], base, 0.0,
                                    entry.gene, f"{ref_aa}{codon_number}{alt_aa}")
                        )  # fmt: skip
    return sequences, panel, changes


def write_fasta(sequences: dict[str, str], path: Path) -> None:
    with path.open("w", encoding="ascii") as handle:
        for name, sequence in sequences.items():
            handle.write(f">{name}\n")
            for i in range(0, len(sequence), 60):
                handle.write(sequence[i : i + 60] + "\n")


def _mutate(fragment: str, start: int, variants: Sequence[Variant], contig: str,
            rng: random.Random) -> str:  # fmt: skip
    """Return the fragment with each variant inside it applied with probability VAF.

    SNVs and indels (``ref``/``alt`` of different lengths, VCF style with the anchor
    base) are applied right to left, so earlier positions stay valid.
    """
    end = start + len(fragment)
    inside = [
        v for v in variants
        if v.contig == contig and start <= v.pos - 1 and v.pos - 1 + len(v.ref) <= end
    ]  # fmt: skip
    for variant in sorted(inside, key=lambda v: v.pos, reverse=True):
        if rng.random() < variant.vaf:
            index = variant.pos - 1 - start
            fragment = fragment[:index] + variant.alt + fragment[index + len(variant.ref) :]
    return fragment


def simulate_pair(
    sequences: dict[str, str],
    variants: Sequence[Variant],
    *,
    sample: str,
    depth: int,
    seed: int,
) -> tuple[bytes, bytes]:
    """Return gzip-compressed R1 and R2 FASTQ with reads covering every contig at ``depth``."""
    rng = random.Random(seed)
    r1, r2 = io.StringIO(), io.StringIO()
    number = 0
    for contig, sequence in sequences.items():
        pairs = depth * len(sequence) // (2 * READ_LENGTH)
        for _ in range(pairs):
            size = max(2 * READ_LENGTH, min(len(sequence), int(rng.gauss(INSERT_MEAN, INSERT_SD))))
            start = rng.randrange(0, len(sequence) - size + 1)
            fragment = _mutate(sequence[start : start + size], start, variants, contig, rng)
            forward = fragment[:READ_LENGTH]
            reverse = fragment[-READ_LENGTH:][::-1].translate(_COMPLEMENT)
            number += 1
            name = f"{sample}:{number}"
            for handle, read, mate in ((r1, forward, 1), (r2, reverse, 2)):
                bases = [
                    rng.choice("ACGT".replace(b, "")) if rng.random() < ERROR_RATE else b
                    for b in read
                ]
                handle.write(f"@{name} {mate}:N:0:1\n{''.join(bases)}\n+\n{'I' * READ_LENGTH}\n")
    return (
        gzip.compress(r1.getvalue().encode("ascii"), mtime=0),
        gzip.compress(r2.getvalue().encode("ascii"), mtime=0),
    )


def write_truth_vcf(variants: Sequence[Variant], sequences: dict[str, str], path: Path) -> None:
    """Write the planted somatic variants as a VCF (INFO: VAF, GENE, PROTEIN)."""
    lines = [
        "##fileformat=VCFv4.2",
        *(f"##contig=<ID={name},length={len(seq)}>" for name, seq in sequences.items()),
        '##INFO=<ID=VAF,Number=1,Type=Float,Description="Planted variant allele fraction">',
        '##INFO=<ID=GENE,Number=1,Type=String,Description="Gene">',
        '##INFO=<ID=PROTEIN,Number=1,Type=String,Description="Protein change">',
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
    ]
    order = {name: i for i, name in enumerate(sequences)}
    for v in sorted(variants, key=lambda v: (order[v.contig], v.pos)):
        info = f"VAF={v.vaf:.3f};GENE={v.gene};PROTEIN={v.protein}"
        lines.append(f"{v.contig}\t{v.pos}\t.\t{v.ref}\t{v.alt}\t.\tPASS\t{info}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
