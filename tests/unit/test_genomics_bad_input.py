"""Bad genomics input through the CLI: each class fails with one clear line, no traceback.

For every bad input the command exits non-zero with an ``error:`` line that names the
file (and the record or read), never quotes the record (the sample ID and the bad value
below are stand-ins for PHI), prints no traceback and no "Aborted!", and leaves nothing
behind: no Parquet, no VCF, no temporary files.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pysam
import pytest
from click.testing import CliRunner, Result

from oncopipe.cli import main
from oncopipe.genomics.variants import BGZF_EOF, InvalidVcfError, describe, variant_rows
from stacks.paths import REPO_ROOT

SECRET_SAMPLE = "JANE-DOE-MRN-4711"  # a sample ID as some exports write it
SECRET_VALUE = "DoeJane"  # a bad value that must not be echoed
HEADER = (
    "##fileformat=VCFv4.2\n##contig=<ID=KRAS,length=1000>\n"
    f"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t{SECRET_SAMPLE}\n"
)
HEADER_LINES = 3


def record(pos: str = "10", ref: str = "A", alt: str = "T", qual: str = "50",
           fmt: str = "GT:AD:DP", sample: str = "0/1:10,5:15", chrom: str = "KRAS",
           ident: str = SECRET_SAMPLE, info: str = f"NOTE={SECRET_SAMPLE}") -> str:  # fmt: skip
    """Return one VCF record line; ID and INFO carry the secret, to catch echoes."""
    return "\t".join([chrom, pos, ident, ref, alt, qual, "PASS", info, fmt, sample]) + "\n"


GOOD = record() + record(pos="20", alt="G,C", sample="1/2:10,5,3:18")


def bgzip(text: bytes, tmp: Path) -> bytes:
    """Return ``text`` BGZF-compressed by htslib (several blocks when it is long)."""
    plain = tmp / "plain.vcf"
    plain.write_bytes(text)
    pysam.tabix_compress(str(plain), str(plain) + ".gz", force=True)
    data = Path(str(plain) + ".gz").read_bytes()
    plain.unlink()
    Path(str(plain) + ".gz").unlink()
    return data


def long_vcf() -> bytes:
    """A VCF of several BGZF blocks (64 KiB each) of random-ish records."""
    rng = random.Random(3)
    lines = [record(pos=str(10 + i), sample=f"0/1:{rng.randint(0, 99)},{rng.randint(0, 99)}:"
                    f"{rng.randint(100, 300)}") for i in range(3000)]  # fmt: skip
    return (HEADER + "".join(lines)).encode()


def _flip_inside_second_block(data: bytes) -> bytes:
    size = int.from_bytes(data[16:18], "little") + 1
    corrupt = bytearray(data)
    for i in range(size + 40, size + 90):  # the second block's deflate data
        corrupt[i] ^= 0x5A
    return bytes(corrupt)


def _bcf(tmp: Path) -> bytes:
    header = pysam.VariantHeader()
    header.contigs.add("KRAS", length=1000)
    out = tmp / "x.bcf"
    with pysam.VariantFile(str(out), "wb", header=header) as dst:
        dst.write(dst.new_record(contig="KRAS", start=9, alleles=("A", "T"), qual=50))
    data = out.read_bytes()
    out.unlink()
    return data


# (case id, builder of the file's bytes, expected message fragment)
Builder = Callable[[Path], bytes]
VCF_CASES: list[tuple[str, Builder, str]] = [
    ("ragged-short",
     lambda t: (HEADER + record() + "KRAS\t11\t" + SECRET_SAMPLE + "\tA\n").encode(),
     f"record 2 (line {HEADER_LINES + 2}): 4 columns, the #CHROM header has 10"),
    ("ragged-long", lambda t: (HEADER + record().rstrip("\n") + "\tEXTRA\n").encode(),
     f"record 1 (line {HEADER_LINES + 1}): 11 columns"),
    ("ad-text", lambda t: (HEADER + record(sample=f"0/1:10,{SECRET_VALUE}:15")).encode(),
     "record 1 (line 4): the first sample's AD values must be non-negative integers"),
    ("ad-negative", lambda t: (HEADER + GOOD + record(sample="0/1:10,-5:15")).encode(),
     "record 3 (line 6): the first sample's AD values"),
    ("ad-decimal", lambda t: (HEADER + record(sample="0/1:10,2.5:15")).encode(),
     "the first sample's AD values"),
    ("ad-empty-value", lambda t: (HEADER + record(sample="0/1:10,:15")).encode(),
     "the first sample's AD values"),
    ("ad-too-few", lambda t: (HEADER + record(sample="0/1:10:15")).encode(),
     "record 1 (line 4): the first sample's AD must have one value per allele"),
    ("ad-too-many-multiallelic",
     lambda t: (HEADER + record(alt="G,C", sample="1/2:1,2,3,4:9")).encode(),
     "one value per allele"),
    ("dp-text", lambda t: (HEADER + record(sample=f"0/1:10,5:{SECRET_VALUE}")).encode(),
     "the first sample's DP must be a non-negative integer"),
    ("dp-negative", lambda t: (HEADER + record(sample="0/1:10,5:-1")).encode(), "DP must be"),
    ("gt-text", lambda t: (HEADER + record(sample="a/b:10,5:15")).encode(), "GT must be"),
    ("sample-more-fields-than-format", lambda t: (HEADER + record(sample="0/1:10,5:15:7")).encode(),
     "more fields than FORMAT names"),
    ("pos-nan", lambda t: (HEADER + record(pos="NaN")).encode(),
     "record 1 (line 4): POS must be a positive integer (got NaN)"),
    ("pos-empty", lambda t: (HEADER + GOOD + record(pos="")).encode(),
     "record 3 (line 6): the POS column is empty"),
    ("pos-negative", lambda t: (HEADER + record(pos="-5")).encode(),
     "POS must be a positive integer (got a negative number)"),
    ("pos-zero", lambda t: (HEADER + record(pos="0")).encode(), "POS must be a positive integer"),
    ("pos-float", lambda t: (HEADER + record(pos="10.0")).encode(),
     "POS must be a positive integer (got a decimal number)"),
    ("pos-exponent", lambda t: (HEADER + record(pos="1e3")).encode(), "POS must be a positive"),
    ("pos-hex", lambda t: (HEADER + record(pos="0x10")).encode(), "POS must be a positive"),
    ("pos-space", lambda t: (HEADER + record(pos=" 10")).encode(), "POS must be a positive"),
    ("pos-huge", lambda t: (HEADER + record(pos="9" * 25)).encode(), "POS must be a positive"),
    ("pos-missing-dot", lambda t: (HEADER + record(pos=".")).encode(), "POS must be a positive"),
    ("ref-not-bases", lambda t: (HEADER + record(ref="X")).encode(), "REF must be bases"),
    ("alt-empty-allele", lambda t: (HEADER + record(alt="G,,C", sample="0/1:1,2,3,4:9")).encode(),
     "an ALT allele must be"),
    ("alt-not-bases", lambda t: (HEADER + record(alt="U")).encode(), "an ALT allele must be"),
    ("qual-nan", lambda t: (HEADER + record(qual="nan")).encode(), "QUAL must be a non-negative"),
    ("qual-negative", lambda t: (HEADER + record(qual="-3")).encode(), "QUAL must be"),
    ("qual-text", lambda t: (HEADER + record(qual=SECRET_VALUE)).encode(), "QUAL must be"),
    ("chrom-space", lambda t: (HEADER + record(chrom="chr 1")).encode(), "CHROM is not a valid"),
    ("id-empty", lambda t: (HEADER + record(ident="")).encode(), "the ID column is empty"),
    ("not-utf8", lambda t: HEADER.encode() + record().encode().replace(b"NOTE=", b"NOTE=\xff\xfe"),
     "record 1 (line 4): not UTF-8 text"),
    ("blank-lines-counted", lambda t: (HEADER + record() + "\n\n" + record(pos="x")).encode(),
     f"record 2 (line {HEADER_LINES + 4}): POS"),
    ("gzip-truncated", lambda t: gzip.compress((HEADER + GOOD * 50).encode())[:-30],
     "the gzip stream is truncated or corrupt"),
    ("gzip-corrupt", lambda t: gzip.compress((HEADER + GOOD * 50).encode())[:40] + b"\0" * 60,
     "the gzip stream is truncated or corrupt"),
    ("bgzf-cut-mid-block", lambda t: bgzip(long_vcf(), t)[:-5000], "BGZF stream is truncated"),
    ("bgzf-cut-at-block-boundary", lambda t: bgzip(long_vcf(), t)[: -len(BGZF_EOF)],
     "end-of-file marker is missing"),
    ("bgzf-bad-crc", lambda t: _flip_inside_second_block(bgzip(long_vcf(), t)),
     "BGZF block 2"),
    ("random-bytes", lambda t: random.Random(1).randbytes(5000), "not a VCF"),
    ("empty-file", lambda t: b"", "not a VCF: the file is empty"),
    ("gzip-of-nothing", lambda t: gzip.compress(b""), "not a VCF"),
    ("text-not-vcf", lambda t: b"patient,dob\nJane,1970\n", "not a VCF"),
    ("no-chrom-line", lambda t: b"##fileformat=VCFv4.2\n##source=x\n", "no #CHROM header line"),
    ("chrom-line-columns", lambda t: HEADER.replace("\tQUAL", "\tQ").encode() + record().encode(),
     "line 3: the #CHROM header line must name the columns"),
    ("meta-line-not-hash", lambda t: HEADER.replace("##contig", "contig").encode(),
     "line 2: a meta line before #CHROM does not start with '##'"),
    ("bcf-not-text", _bcf, "is BCF (binary VCF), not VCF text"),
]  # fmt: skip


def _no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "Aborted!" not in result.output


def _no_phi(result: Result) -> None:
    assert SECRET_SAMPLE not in result.output and SECRET_VALUE not in result.output


@pytest.mark.parametrize(("case", "build", "message"), VCF_CASES, ids=[c[0] for c in VCF_CASES])
def test_variants_to_parquet_rejects_bad_vcf(
    tmp_path: Path, case: str, build: Builder, message: str
) -> None:
    vcf = tmp_path / ("in.vcf.gz" if case.startswith(("gzip", "bgzf")) else "in.vcf")
    vcf.write_bytes(build(tmp_path))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = CliRunner().invoke(main, ["variants-to-parquet", str(vcf),
                                       "--out", str(out_dir / "v.parquet")])  # fmt: skip
    assert result.exit_code != 0
    _no_traceback(result)
    _no_phi(result)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {vcf}: "), result.output
    assert message in lines[0]
    assert list(out_dir.iterdir()) == []  # no Parquet, complete or partial


def test_bad_value_is_described_not_quoted() -> None:
    assert describe("NaN") == "NaN"
    assert describe("") == "an empty value"
    assert describe("-12") == "a negative number"
    assert describe("1.5") == describe("2e5") == "a decimal number"
    assert describe(SECRET_VALUE) == f"text of {len(SECRET_VALUE)} characters"


def test_arrow_error_is_not_chained_into_the_vcf_error(tmp_path: Path) -> None:
    """A logged traceback of the error must not carry Arrow's message (it quotes the row)."""
    vcf = tmp_path / "x.vcf"
    vcf.write_text(HEADER + "KRAS\t11\t" + SECRET_SAMPLE + "\tA\n")
    with pytest.raises(InvalidVcfError) as err:
        variant_rows(vcf, patient_key="pk", sample="T", run_id="r")
    chained = [err.value.__cause__, err.value.__context__]
    assert all(c is None or SECRET_SAMPLE not in str(c) for c in chained)
    assert err.value.reason_code == "invalid-vcf"


def test_valid_vcf_still_converts_with_blank_lines_and_bgzf(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    vcf = tmp_path / "ok.vcf.gz"
    vcf.write_bytes(bgzip((HEADER + record() + "\n" + record(pos="20", alt="G,C",
                                                             sample="1/2:10,5,3:18")).encode(),
                          tmp_path))  # fmt: skip
    out = tmp_path / "ok.parquet"
    result = CliRunner().invoke(main, ["variants-to-parquet", str(vcf), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    assert [(r["pos"], r["alt"], r["alt_depth"], r["depth"]) for r in rows] == [
        (10, "T", 5, 15), (20, "G", 5, 18), (20, "C", 3, 18),
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.parquet", "ok.vcf.gz"]


def test_failed_parquet_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from oncopipe.genomics.variants import write_parquet

    vcf = tmp_path / "ok.vcf"
    vcf.write_text(HEADER + GOOD)
    table = variant_rows(vcf, patient_key="pk", sample="T", run_id="r")
    out = tmp_path / "out" / "v.parquet"
    out.parent.mkdir()
    real = pq.write_table

    def half_then_fail(table: Any, where: str, **kwargs: Any) -> None:
        real(table, where, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_parquet(table, out)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ('[{"gene": "KRAS", "contig": "KRAS", "cds_start": 1}]', "gene entry 1: no 'first_codon'"),
        ('[{"gene": "KRAS", "contig": "KRAS", "cds_start": "x", "first_codon": 1, '
         '"cds_end": 9}]', "gene entry 1: coordinates and hotspot codons must be integers"),
        ('{"gene": "KRAS"}', "must be a JSON list of gene objects"),
        ("[{", "not a readable JSON file"),
    ],
)  # fmt: skip
def test_bad_panel_is_one_line(tmp_path: Path, annotation: str, message: str) -> None:
    vcf = tmp_path / "ok.vcf"
    vcf.write_text(HEADER + GOOD)
    panel = tmp_path / "panel.json"
    panel.write_text(annotation)
    reference = tmp_path / "ref.fa"
    reference.write_text(">KRAS\nACGT\n")
    result = CliRunner().invoke(main, ["variants-to-parquet", str(vcf), "--out",
                                       str(tmp_path / "v.parquet"), "--panel", str(panel),
                                       "--reference", str(reference)])  # fmt: skip
    assert result.exit_code != 0
    _no_traceback(result)
    assert f"error: {panel}: {message}" in result.output
    assert not (tmp_path / "v.parquet").exists()


# -- call: bad BAMs ----------------------------------------------------------------------

needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("bwa", "samtools", "bcftools")),
    reason="bwa/samtools/bcftools are installed by `make setup`",
)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from oncopipe.genomics.align import ReadGroup, align_pair
    from oncopipe.genomics.simulate import Variant, make_panel, simulate_pair, write_fasta

    work = tmp_path_factory.mktemp("bam")
    sequences, _, changes = make_panel()
    reference = work / "panel.fa"
    write_fasta(sequences, reference)
    v = changes["KRAS G12C"][0]
    r1, r2 = simulate_pair(sequences, [Variant(v.contig, v.pos, v.ref, v.alt, 0.4)],
                           sample="T", depth=40, seed=4)  # fmt: skip
    (work / "T_1.fq.gz").write_bytes(r1)
    (work / "T_2.fq.gz").write_bytes(r2)
    bam = work / "T.bam"
    align_pair(reference, work / "T_1.fq.gz", work / "T_2.fq.gz", bam,
               read_group=ReadGroup(id="T", sample="pk-t", library="T"), threads=1)  # fmt: skip
    return {"reference": reference, "bam": bam}


def _corrupt_middle(data: bytes) -> bytes:
    corrupt = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        corrupt[i] ^= 0x5A
    return bytes(corrupt)


BAM_CASES: list[tuple[str, Callable[[bytes], bytes], str]] = [
    ("truncated-half", lambda b: b[: len(b) // 2], "the file is truncated"),
    ("truncated-eof-block-only", lambda b: b[: -len(BGZF_EOF)], "the file is truncated"),
    ("corrupt-block", _corrupt_middle, "is corrupt"),
    ("random-bytes", lambda b: random.Random(2).randbytes(4000), "cannot be opened"),
    ("zero-bytes", lambda b: b"", "is not alignment data"),
    ("text", lambda b: b"not a bam\n", "is not alignment data"),
]  # fmt: skip


def _call(aligned: dict[str, Path], tumour: Path, out: Path, normal: Path | None = None) -> Result:
    args = ["call", "--tumour", str(tumour), "--reference", str(aligned["reference"]),
            "--out", str(out)] + (["--normal", str(normal)] if normal else [])  # fmt: skip
    return CliRunner().invoke(main, args)


@needs_tools
@pytest.mark.parametrize(("case", "damage", "message"), BAM_CASES, ids=[c[0] for c in BAM_CASES])
def test_call_rejects_bad_bam(aligned: dict[str, Path], tmp_path: Path, case: str,
                              damage: Callable[[bytes], bytes], message: str) -> None:  # fmt: skip
    bad = tmp_path / "bad.bam"
    bad.write_bytes(damage(aligned["bam"].read_bytes()))
    out_dir = tmp_path / "calls"
    out_dir.mkdir()
    result = _call(aligned, bad, out_dir / "x.vcf.gz")
    assert result.exit_code != 0, result.output
    assert "alleles called" not in result.output
    _no_traceback(result)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: ") and message in lines[0]
    assert list(out_dir.iterdir()) == []  # no VCF, no .samples.txt, no pileup, no temp dir


@needs_tools
def test_call_names_the_bad_normal(aligned: dict[str, Path], tmp_path: Path) -> None:
    normal = tmp_path / "normal.bam"
    normal.write_bytes(_corrupt_middle(aligned["bam"].read_bytes()))
    out_dir = tmp_path / "calls"
    out_dir.mkdir()
    result = _call(aligned, aligned["bam"], out_dir / "x.vcf.gz", normal=normal)
    assert result.exit_code != 0
    assert f"error: {normal}: is corrupt" in result.output
    assert list(out_dir.iterdir()) == []


@needs_tools
def test_call_on_good_bam_leaves_only_the_vcf(aligned: dict[str, Path], tmp_path: Path) -> None:
    out_dir = tmp_path / "calls with space"
    out_dir.mkdir()
    result = _call(aligned, aligned["bam"], out_dir / "x.vcf.gz")
    assert result.exit_code == 0, result.output
    assert "1 alleles called" in result.output
    assert sorted(p.name for p in out_dir.iterdir()) == ["x.vcf.gz", "x.vcf.gz.tbi"]
    with pysam.VariantFile(str(out_dir / "x.vcf.gz")) as vcf:
        assert [(r.pos, r.alts) for r in vcf] == [(334, ("T",))]
        assert "bcftools_normCommand" not in str(vcf.header)  # no paths in the header


# -- align: bad FASTQ --------------------------------------------------------------------


def _fastq(reads: int, mate: int) -> bytes:
    text = "".join(f"@r{i} {mate}:N:0:1\nACGTACGTAC\n+\nIIIIIIIIII\n" for i in range(reads))
    return gzip.compress(text.encode(), mtime=0)


def _one_huge_line() -> bytes:
    """A ~300 KB gzip whose single line inflates to 300 MB (streamed: never held whole)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"A" * 1_000_000
    return z.compress(b"@") + b"".join(z.compress(chunk) for _ in range(300)) + z.flush()


FASTQ_CASES: list[tuple[str, Callable[[], bytes], str]] = [
    ("zero-bytes", lambda: b"", "R1.fastq.gz: file is empty: no reads"),
    ("empty-gzip", lambda: gzip.compress(b""), "R1.fastq.gz: file is empty: no reads"),
    ("one-huge-line", _one_huge_line, "R1.fastq.gz: read 1: the header line is longer than"),
    ("truncated-gzip", lambda: _fastq(500, 1)[:-200], "the gzip stream is truncated or corrupt"),
    ("not-gzip", lambda: b"@r0 1:N:0:1\nACGT\n+\nIIII\n", "the gzip stream is truncated"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "build", "message"), FASTQ_CASES, ids=[c[0] for c in FASTQ_CASES])
def test_align_rejects_bad_fastq(tmp_path: Path, case: str, build: Callable[[], bytes],
                                 message: str) -> None:  # fmt: skip
    r1, r2 = tmp_path / "R1.fastq.gz", tmp_path / "R2.fastq.gz"
    r1.write_bytes(build())
    r2.write_bytes(_fastq(500, 2))
    reference = tmp_path / "ref.fa"
    reference.write_text(">c\nACGT\n")
    out = tmp_path / "out" / "s.bam"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["align", "--r1", str(r1), "--r2", str(r2),
                                       "--reference", str(reference), "--sample", "S",
                                       "--out", str(out)])  # fmt: skip
    assert result.exit_code != 0
    _no_traceback(result)
    assert "counts differ" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert list(out.parent.iterdir()) == []


def test_huge_line_memory_is_bounded(tmp_path: Path) -> None:
    """Validating a 300 KB gzip of one 300 MB line takes little memory (it took ~600 MB)."""
    r1 = tmp_path / "R1.fastq.gz"
    r1.write_bytes(_one_huge_line())
    probe = (
        "import resource, sys\n"
        "from oncopipe.genomics.fastq import InvalidFastqError\n"
        "from oncopipe.genomics.fastq_batches import validate_pair\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    with open(sys.argv[1], 'rb') as a, open(sys.argv[1], 'rb') as b:\n"
        "        validate_pair(a, b, name_1='R1', name_2='R2')\n"
        "except InvalidFastqError as e:\n"
        "    message = str(e)\n"
        "else:\n"
        "    message = 'accepted'\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
        "print(message)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(r1)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    growth_kib, message = done.stdout.strip().split("\n", 1)
    assert int(growth_kib) < 64 * 1024, f"validation grew RSS by {growth_kib} KiB"
    assert message.startswith("R1: read 1: the header line is longer than 1048576 bytes")


def test_long_reads_fit_with_a_higher_limit() -> None:
    from oncopipe.genomics.fastq import InvalidFastqError
    from oncopipe.genomics.fastq_batches import validate_pair

    def pair(length: int) -> tuple[io.BytesIO, io.BytesIO]:
        text = [f"@r {m}\n{'A' * length}\n+\n{'I' * length}\n".encode() for m in (1, 2)]
        return io.BytesIO(gzip.compress(text[0])), io.BytesIO(gzip.compress(text[1]))

    assert validate_pair(*pair(50), name_1="a", name_2="b", max_line_bytes=50).reads == 1
    with pytest.raises(InvalidFastqError, match="a: read 1: the sequence line is longer than 50"):
        validate_pair(*pair(51), name_1="a", name_2="b", max_line_bytes=50)


@pytest.mark.skipif(shutil.which("samtools") is None, reason="samtools is installed by make setup")
def test_align_survives_a_chatty_aligner(tmp_path: Path) -> None:
    """bwa logs a line per batch; 1 MB of stderr must not block it (a pipe nobody read did)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    fake = tools / "bwa"
    fake.write_text("#!/bin/sh\nhead -c 1000000 /dev/zero | tr '\\0' x >&2\n"
                    "printf '@HD\\tVN:1.6\\n@SQ\\tSN:c\\tLN:4\\n'\n")  # fmt: skip
    fake.chmod(0o755)
    reference = tmp_path / "ref.fa"
    reference.write_text(">c\nACGT\n")
    for suffix in (".amb", ".ann", ".bwt", ".pac", ".sa"):
        Path(f"{reference}{suffix}").write_bytes(b"")
    probe = (
        "import sys\nfrom pathlib import Path\n"
        "from oncopipe.genomics.align import ReadGroup, align_pair\n"
        "qc = align_pair(Path(sys.argv[1]), Path('r1'), Path('r2'), Path(sys.argv[2]),\n"
        "                read_group=ReadGroup(id='S', sample='S', library='S'), threads=1,\n"
        "                calibration_pairs=0)\n"
        "print(qc.reads)\n"
    )
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe, str(reference), str(tmp_path / "s.bam")],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("align_pair blocked on the aligner's stderr")
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "0" and (tmp_path / "s.bam").exists()
