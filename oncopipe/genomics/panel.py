"""The gene panel: contigs, coding coordinates, hotspot codons, protein changes.

A panel annotation is JSON, one entry per gene:
``{"gene": "KRAS", "contig": "KRAS", "cds_start": 301, "first_codon": 1,
"hotspots": {"12": "G12C"}}`` — the coding sequence runs forward on the contig from
``cds_start`` (1-based), its first full codon being codon ``first_codon``. The sample
panel (:func:`oncopipe.genomics.simulate.make_panel`) covers a window of each gene around
its hotspots; a deployment brings its own panel in the same format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from oncopipe.errors import InputError

# The standard genetic code (NCBI translation table 1).
_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {
    a + b + c: _AMINO[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}


def translate(codon: str) -> str:
    """Return the one-letter amino acid of a codon (``X`` if it has an N)."""
    return CODON_TABLE.get(codon.upper(), "X")


class InvalidPanelError(InputError):
    """A panel annotation cannot be read; the message names the file and gene entry."""

    reason_code = "invalid-panel"


@dataclass(frozen=True)
class Gene:
    gene: str
    contig: str
    cds_start: int
    first_codon: int
    cds_end: int
    hotspots: dict[int, str] = field(default_factory=dict)

    def codon_at(self, pos: int) -> tuple[int, int] | None:
        """Return (codon number, 0-based offset in the codon) of a 1-based position."""
        if not self.cds_start <= pos <= self.cds_end:
            return None
        offset = pos - self.cds_start
        return self.first_codon + offset // 3, offset % 3


@dataclass(frozen=True)
class Panel:
    genes: tuple[Gene, ...]

    @classmethod
    def load(cls, path: Path) -> Panel:
        """Read a panel annotation (JSON list of genes).

        Raises:
            InvalidPanelError: not JSON, not a list of gene objects, or a gene lacks a
                key or has a non-integer coordinate (the message names gene entry).
        """
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidPanelError(
                str(path), f"not a readable JSON file ({type(e).__name__})"
            ) from e
        if not isinstance(raw, list):
            raise InvalidPanelError(str(path), "must be a JSON list of gene objects")
        genes = []
        for number, g in enumerate(raw, start=1):
            try:
                genes.append(
                    Gene(
                        gene=str(g["gene"]),
                        contig=str(g["contig"]),
                        cds_start=int(g["cds_start"]),
                        first_codon=int(g["first_codon"]),
                        cds_end=int(g["cds_end"]),
                        hotspots={int(k): str(v) for k, v in g.get("hotspots", {}).items()},
                    )
                )
            except KeyError as e:
                raise InvalidPanelError(str(path), f"gene entry {number}: no {e.args[0]!r}") from e
            except (TypeError, ValueError, AttributeError) as e:
                raise InvalidPanelError(
                    str(path),
                    f"gene entry {number}: coordinates and hotspot codons must be integers "
                    f"({type(e).__name__})",
                ) from e
        return cls(genes=tuple(genes))

    def dump(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                [
                    {
                        "gene": g.gene,
                        "contig": g.contig,
                        "cds_start": g.cds_start,
                        "first_codon": g.first_codon,
                        "cds_end": g.cds_end,
                        "hotspots": {str(k): v for k, v in g.hotspots.items()},
                    }
                    for g in self.genes
                ],
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )

    def gene_at(self, contig: str, pos: int) -> Gene | None:
        for gene in self.genes:
            if gene.contig == contig and gene.cds_start <= pos <= gene.cds_end:
                return gene
        return next((g for g in self.genes if g.contig == contig), None)

    def protein_change(
        self, contig: str, pos: int, ref: str, alt: str, sequence: str
    ) -> str | None:
        """Return the protein change of a coding SNV (``G12C``), or None.

        ``sequence`` is the contig's reference sequence. Only single-base substitutions
        inside a gene's coding window get one.
        """
        gene = self.gene_at(contig, pos)
        if gene is None or len(ref) != 1 or len(alt) != 1:
            return None
        located = gene.codon_at(pos)
        if located is None:
            return None
        number, offset = located
        start = pos - offset - 1  # 0-based start of the codon
        codon = sequence[start : start + 3].upper()
        if len(codon) < 3 or codon[offset] != ref.upper():
            return None
        mutated = codon[:offset] + alt.upper() + codon[offset + 1 :]
        before, after = translate(codon), translate(mutated)
        return f"{before}{number}{after}"
