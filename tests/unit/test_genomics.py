"""Genomics cores on simulated panel data: planted variants found at the right VAF."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pysam
import pytest

from oncopipe.genomics.align import ReadGroup, align_pair
from oncopipe.genomics.call import call_variants, error_qual
from oncopipe.genomics.simulate import Variant, make_panel, simulate_pair, write_fasta
from oncopipe.genomics.variants import variant_rows, write_parquet

pytestmark = pytest.mark.skipif(
    shutil.which("bwa") is None or shutil.which("bcftools") is None,
    reason="bwa/samtools/bcftools are installed by `make setup`",
)
PLANTED = {"KRAS G12C": 0.35, "EGFR L858R": 0.25, "BRAF V600E": 0.5, "PIK3CA H1047R": 0.2}


@pytest.fixture(scope="module")
def called(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("genomics")
    sequences, panel, changes = make_panel()
    reference = work / "panel.fa"
    write_fasta(sequences, reference)
    planted = []
    for name, vaf in PLANTED.items():
        v = changes[name][0]
        planted.append(Variant(v.contig, v.pos, v.ref, v.alt, vaf, v.gene, v.protein))
    base = sequences["MET"][199]
    germline = Variant("MET", 200, base, "C" if base != "C" else "A", 0.5)
    bams = {}
    for sample, variants, depth, seed in (("T", [*planted, germline], 150, 1),
                                          ("N", [germline], 80, 2)):  # fmt: skip
        r1, r2 = simulate_pair(sequences, variants, sample=sample, depth=depth, seed=seed)
        (work / f"{sample}_1.fq.gz").write_bytes(r1)
        (work / f"{sample}_2.fq.gz").write_bytes(r2)
        bams[sample] = work / f"{sample}.bam"
        qc = align_pair(
            reference, work / f"{sample}_1.fq.gz", work / f"{sample}_2.fq.gz", bams[sample],
            read_group=ReadGroup(id=f"{sample}.L1", sample=f"pk-test-{sample}", library=sample),
            threads=2,
        )  # fmt: skip
        assert qc.mapped_fraction > 0.99 and abs(qc.mean_depth - depth) < 0.1 * depth
    vcf = work / "calls.vcf.gz"
    call_variants(reference, bams["T"], vcf, normal_bam=bams["N"])
    return {"reference": reference, "panel": panel, "planted": planted, "germline": germline,
            "bams": bams, "vcf": vcf}  # fmt: skip


def test_bam_is_sorted_indexed_with_read_group(called: dict[str, Any]) -> None:
    bam = called["bams"]["T"]
    assert Path(f"{bam}.bai").exists()
    with pysam.AlignmentFile(str(bam)) as handle:
        header = handle.header.to_dict()
        assert header["HD"]["SO"] == "coordinate"
        assert header["RG"][0] == {"ID": "T.L1", "SM": "pk-test-T", "LB": "T", "PL": "ILLUMINA"}
        positions = [(r.reference_id, r.reference_start) for r in handle.fetch(until_eof=True)]
    assert positions == sorted(positions)


def test_planted_variants_found_with_their_vaf(called: dict[str, Any]) -> None:
    table = variant_rows(
        called["vcf"], patient_key="pk-test", sample="T", run_id="r1",
        panel=called["panel"], reference=called["reference"],
    )  # fmt: skip
    rows = table.to_pylist()
    passed = {(r["chrom"], r["pos"], r["ref"], r["alt"]): r for r in rows if r["filter"] == "PASS"}
    for variant in called["planted"]:
        row = passed[(variant.contig, variant.pos, variant.ref, variant.alt)]
        depth = row["depth"]
        sd = (variant.vaf * (1 - variant.vaf) / depth) ** 0.5
        assert abs(row["vaf"] - variant.vaf) < 4 * sd + 0.02, (variant, row["vaf"])
        assert row["gene"] == variant.gene and row["protein_change"] == variant.protein
    assert len(passed) == len(called["planted"])  # no false positive somatic call
    germline = called["germline"]
    filtered = [r for r in rows if (r["chrom"], r["pos"]) == (germline.contig, germline.pos)]
    assert filtered and filtered[0]["filter"] == "germline"


def test_variant_table_parquet_round_trip(called: dict[str, Any], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = variant_rows(called["vcf"], patient_key="pk-test", sample="T", run_id="r1",
                         panel=called["panel"], reference=called["reference"])  # fmt: skip
    out = tmp_path / "variants.parquet"
    assert write_parquet(table, out) == table.num_rows
    back = pq.read_table(out)
    assert back.column("protein_change").to_pylist().count("G12C") == 1
    assert back.schema.field("pos").type == "int64"


def test_error_qual_grows_with_evidence() -> None:
    assert error_qual(0, 100) == 0.0
    assert error_qual(10, 100) > error_qual(3, 100) > 30


def test_multiallelic_records_are_split_with_their_own_depths(tmp_path: Path) -> None:
    vcf = tmp_path / "multi.vcf"
    vcf.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=KRAS,length=1000>\n"
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tT\tN\n"
        "KRAS\t10\t.\tA\tT,G\t50\tPASS\t.\tGT:AD:DP\t1/2:10,5,3:18\t0/0:20,0,0:20\n"
        "KRAS\t20\t.\tC\tCA\t.\tgermline\t.\tGT:AD\t0/1:7,3\t0/1:9,9\n"
    )
    table = variant_rows(vcf, patient_key="pk-x", sample="T", run_id="r").to_pylist()
    assert [(r["pos"], r["alt"], r["alt_depth"], r["depth"], r["vaf"]) for r in table] == [
        (10, "T", 5, 18, round(5 / 18, 4)),
        (10, "G", 3, 18, round(3 / 18, 4)),
        (20, "CA", 3, 10, 0.3),  # no DP: depth is the sum of AD
    ]
    assert table[2]["qual"] is None and table[2]["filter"] == "germline"
    assert table[0]["genotype"] == "1/2"
