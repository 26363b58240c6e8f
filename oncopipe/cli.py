"""The ``oncopipe`` command line. Every command has ``--help``.

Stage commands print plain lines (``cli_common.echo``: no markup, and rich is not even
imported); tables and JSON go through rich. Nothing printed carries PHI (object keys,
counts, pseudonymous keys and error reasons only).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from oncopipe.cli_common import console, echo, err_console, fail as _fail
from oncopipe.errors import OncopipeError

#: Command groups in their own modules, imported only when used (the model group's
#: governance module pulls in botocore: ~20 ms of every other command's start-up,
#: ``benchmarks/profiles.md``).
LAZY_COMMANDS = {
    "local": ("oncopipe.cli_local", "local"),
    "model": ("oncopipe.model_cli", "model"),
    "ops": ("oncopipe.cli_ops", "ops"),
    "report": ("oncopipe.cli_ops", "report_command"),
}


class _Commands(click.Group):
    """The top-level group: the groups of :data:`LAZY_COMMANDS` load when they are used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            import importlib

            module, name = LAZY_COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=None, version=__import__("oncopipe").__version__)
def main() -> None:
    """oncopipe: multimodal oncology data platform on AWS (and on your laptop)."""


# -- sample data ---------------------------------------------------------------------------
@main.command("sample-data")
@click.option(
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write the cohort to (laid out like the ingest bucket).",
)
@click.option("--patients", default=3, show_default=True, type=click.IntRange(1, 500))
@click.option(
    "--depth",
    default=80,
    show_default=True,
    type=click.IntRange(10, 5000),
    help="Mean coverage of the panel in the tumour samples (normals get 60 %).",
)
@click.option("--seed", default=7, show_default=True, type=int)
def sample_data(out: Path, patients: int, depth: int, seed: int) -> None:  # fmt: skip
    """Generate the sample cohort: panel reference, simulated FASTQ with planted variants
    (truth VCFs under _truth/), notes, sample sheets, and bad inputs."""
    from oncopipe.sample_data import generate

    files = generate(out, patients=patients, depth=depth, seed=seed)
    echo(
        f"wrote {len(files.all_keys)} files for {files.patients} patients under {out}/ "
        f"(sample sheets: {', '.join(files.samplesheet_keys)})"
    )


# -- genomics ------------------------------------------------------------------------------
@main.command("align")
@click.option("--r1", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--r2", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="FASTA; the BWA index is built beside it if missing.",
)
@click.option("--sample", required=True, help="Sample id (read group ID and LB).")
@click.option(
    "--patient-key",
    default=None,
    help="Read group SM (the pseudonymous key; default: the sample id).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output BAM (coordinate-sorted; .bai and .qc.json beside it).",
)
@click.option("--threads", type=click.IntRange(1, 256), default=None)
@click.option(
    "--max-line-bytes",
    type=click.IntRange(1),
    default=None,
    help="Longest FASTQ line accepted (bounds memory per record) [default: 1 MiB].",
)
def align(r1: Path, r2: Path, reference: Path, sample: str, patient_key: str | None,
          out: Path, threads: int | None, max_line_bytes: int | None) -> None:  # fmt: skip
    """Validate a FASTQ pair and align it: BWA-MEM -> sorted, indexed BAM + QC JSON."""
    from oncopipe.genomics.align import ReadGroup, align_pair
    from oncopipe.genomics.fastq import MAX_LINE_BYTES
    from oncopipe.genomics.fastq_batches import validate_pair

    try:
        with r1.open("rb") as h1, r2.open("rb") as h2:
            stats = validate_pair(h1, h2, name_1=str(r1), name_2=str(r2),
                                  max_line_bytes=max_line_bytes or MAX_LINE_BYTES)  # fmt: skip
        group = ReadGroup(id=sample, sample=patient_key or sample, library=sample)
        qc = align_pair(reference, r1, r2, out, read_group=group, threads=threads)
    except (OncopipeError, ValueError) as e:
        _fail(e)
    out.with_suffix(".qc.json").write_text(qc.to_json() + "\n", encoding="utf-8")
    echo(f"{out}: {stats.reads} pairs, {qc.mapped_fraction:.1%} mapped, "
                  f"mean depth {qc.mean_depth:.1f}")  # fmt: skip


@main.command("call")
@click.option(
    "--tumor",
    "--tumour",
    "tumour",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--normal",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Matched normal BAM: alleles seen in it are filtered.",
)
@click.option(
    "--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Output VCF (bgzipped, .tbi beside it).",
)
@click.option("--min-vaf", default=0.05, show_default=True, type=click.FloatRange(0.001, 1))
@click.option("--min-alt-reads", default=3, show_default=True, type=click.IntRange(1))
def call(tumour: Path, normal: Path | None, reference: Path, out: Path, min_vaf: float,
         min_alt_reads: int) -> None:  # fmt: skip
    """Call variants with per-allele depth and VAF; left-align and split (bcftools norm)."""
    from oncopipe.genomics.call import CallerSettings, call_variants

    try:
        count = call_variants(reference, tumour, out, normal_bam=normal,
                              settings=CallerSettings(min_vaf=min_vaf,
                                                      min_alt_reads=min_alt_reads))  # fmt: skip
    except (OncopipeError, ValueError) as e:
        _fail(e)
    echo(f"{out}: {count} alleles called")


@main.command("variants-to-parquet")
@click.argument("vcf", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--patient-key", default="", help="Patient key column value.")
@click.option("--sample", default="", help="Sample column value.")
@click.option("--run-id", default="manual", show_default=True)
@click.option(
    "--panel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Panel annotation (JSON) for gene and protein change.",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Reference FASTA (needed with --panel).",
)
def variants_to_parquet(vcf: Path, out: Path, patient_key: str, sample: str, run_id: str,
                        panel: Path | None, reference: Path | None) -> None:  # fmt: skip
    """Convert a VCF to the Parquet variant table (one row per ALT allele)."""
    from oncopipe.genomics.panel import Panel
    from oncopipe.genomics.variants import variant_rows, write_parquet

    if panel is not None and reference is None:
        _fail(ValueError("--panel needs --reference (protein changes read the codons)"))
    try:
        columns = variant_rows(vcf, patient_key=patient_key, sample=sample, run_id=run_id,
                               panel=Panel.load(panel) if panel else None,
                               reference=reference)  # fmt: skip
        rows = write_parquet(columns, out)
    except (OncopipeError, ValueError, OSError) as e:
        _fail(e)
    echo(f"{out}: {rows} rows")


# -- imaging -------------------------------------------------------------------------------
@main.command("deid")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder: <patient key>/<study>/<series>/<instance>.dcm",
)
@click.option(
    "--no-date-shift", is_flag=True, help="Remove dates instead of shifting them per patient."
)
@click.option(
    "--drop-patient-characteristics",
    is_flag=True,
    help="Remove age, sex, size and weight (kept by default: the model uses them).",
)
@click.option(
    "--clean-descriptors",
    is_flag=True,
    help="Keep descriptions with the patient's names and IDs removed from them.",
)
@click.option("--retain-device-identity", is_flag=True)
def deid(inputs: tuple[Path, ...], out: Path, no_date_shift: bool,
         drop_patient_characteristics: bool, clean_descriptors: bool,
         retain_device_identity: bool) -> None:  # fmt: skip
    """De-identify DICOM files or folders (recursive), PS3.15 Annex E Basic Profile.

    The pseudonymisation secret comes from ONCOPIPE_PSEUDONYM_SECRET (hex) or
    PSEUDONYM_SECRET_ARN, as for every stage. Files that cannot be released are listed
    with the reason and not written.
    """
    from oncopipe.imaging.deid import deidentify_file, write_deidentified
    from oncopipe.imaging.options import DeidOptions
    from oncopipe.pseudonym import load_secret

    try:
        secret = load_secret()
    except OncopipeError as e:
        _fail(e)
    options = DeidOptions(
        retain_long_modified_dates=not no_date_shift,
        retain_patient_characteristics=not drop_patient_characteristics,
        clean_descriptors=clean_descriptors,
        retain_device_identity=retain_device_identity,
    )
    files = sorted(
        {p for i in inputs for p in ([i] if i.is_file() else i.rglob("*")) if p.is_file()}
    )
    written, refused = 0, 0
    for path in files:
        try:
            data, key, ds = deidentify_file(path, secret=secret, options=options)
            write_deidentified(out, key, ds, data, source=str(path))
        except OncopipeError as e:
            refused += 1
            echo(f"refused {e}", err=True)
            continue
        written += 1
    echo(f"{written} de-identified under {out}/, {refused} refused")
    if refused:
        sys.exit(1)


@main.command("dicom-to-parquet")
@click.argument("series_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option(
    "--rtstruct",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="RTSTRUCT whose contours become masks beside the volume.",
)
@click.option(
    "--seg",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="DICOM SEG whose segments become masks beside the volume.",
)
def dicom_to_parquet(series_dir: Path, out: Path, rtstruct: Path | None,
                     seg: Path | None) -> None:  # fmt: skip
    """Convert one DICOM series (a folder, recursive) to a lossless Parquet volume.

    Read it back with oncopipe.imaging.volume.read_volume (numpy) and to_sitk (SimpleITK).
    """
    from oncopipe.imaging.volume import series_to_parquet

    paths = sorted(p for p in series_dir.rglob("*") if p.is_file())
    try:
        geometry, size = series_to_parquet(paths, out, source=str(series_dir))
    except OncopipeError as e:
        _fail(e)
    source = sum(p.stat().st_size for p in paths)
    echo(f"{out}: {geometry.dimensions} voxels, spacing {geometry.spacing} mm, "
                  f"{size} bytes ({size / source:.0%} of the DICOM files)")  # fmt: skip
    if rtstruct or seg:
        from oncopipe.imaging.dicom_read import read_dicom_file
        from oncopipe.imaging.masks import rtstruct_masks, seg_masks, write_masks

        segmentation = rtstruct or seg
        assert segmentation is not None
        convert = rtstruct_masks if rtstruct else seg_masks
        try:
            masks = convert(read_dicom_file(segmentation), geometry, source=str(segmentation))
        except OncopipeError as e:
            _fail(e)
        target = out.with_name(out.stem + ".masks.parquet")
        write_masks(masks, geometry, target)
        echo(f"{target}: masks {', '.join(masks)}")


# -- radiomics ----------------------------------------------------------------------------
@contextmanager
def _series_progress(total: int) -> Iterator[Callable[..., None]]:
    """Yield a callback that advances a progress bar of ``total`` series.

    The bar is drawn only on a terminal and for more than one series: in a job's log it
    would be one line at the end, and rich.progress is 0.1 s of a small scan's start-up.
    """
    if total < 2 or not sys.stdout.isatty():
        yield lambda *_: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console.rich())  # fmt: skip
    with progress:
        task = progress.add_task("radiomics (series)", total=total)
        yield lambda *_: progress.advance(task)


@main.command("radiomics")
@click.option(
    "--volume",
    "volumes",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="Parquet volume (oncopipe dicom-to-parquet or curated imaging/volumes/); repeat "
    "for several series, extracted in parallel.",
)
@click.option(
    "--mask",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Masks Parquet (one volume only). Default: X.masks.parquet beside X.parquet, or "
    "imaging/masks/ beside imaging/volumes/.",
)
@click.option(
    "--params",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="PyRadiomics parameter file. Default: oncopipe/radiomics/params/radiomics-v1.yaml.",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output Parquet: one row per series, ROI and feature.")  # fmt: skip
@click.option("--workers", type=int, default=1, show_default=True,
              help="Processes (one series each).")  # fmt: skip
@click.option("--patient-key", default="", help="Patient key recorded on the rows.")
@click.option("--run-id", default="", help="Run ID recorded on the rows.")
def radiomics(volumes: tuple[Path, ...], mask: Path | None, params: Path | None, out: Path,
              workers: int, patient_key: str, run_id: str) -> None:  # fmt: skip
    """Extract PyRadiomics features of every ROI of one or more volumes."""
    from oncopipe.radiomics.core import (
        Job,
        RadiomicsError,
        extract_many,
        load_params,
        write_features,
    )

    if mask is not None and len(volumes) > 1:
        _fail(ValueError("--mask applies to one --volume; give masks beside each volume"))
    try:
        parameters = load_params(params)
    except OncopipeError as e:
        _fail(e)
    jobs = [Job(v, mask, patient_key, run_id) for v in volumes]
    rows: list[dict[str, object]] = []
    failed: list[str] = []
    with _series_progress(len(jobs)) as advance:
        for _, result in extract_many(jobs, parameters, workers=workers, progress=advance):
            if isinstance(result, RadiomicsError):
                failed.append(str(result))
            else:
                rows.extend(result.rows)
    for reason in failed:
        echo(f"error: {reason}", err=True)
    if rows:
        write_features(rows, out)
        rois = len({(r["series_key"], r["roi"]) for r in rows})
        echo(f"{out}: {len(rows)} features of {rois} ROIs "
                      f"(parameters {parameters.hash})")  # fmt: skip
    if failed:
        sys.exit(1)


# -- clinical notes -----------------------------------------------------------------------
@main.command("notes")
@click.argument("inputs", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Concepts Parquet: a row per mention, offsets in scrubbed text.")  # fmt: skip
@click.option("--scrubbed-out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write each scrubbed note here as <patient_key>/<note_id>.txt.")  # fmt: skip
@click.option("--patient", default=None,
              help="Source patient id for notes without a Patient-ID header.")  # fmt: skip
def notes(inputs: tuple[Path, ...], out: Path, scrubbed_out: Path | None,
          patient: str | None) -> None:  # fmt: skip
    """Scrub PHI from clinical notes (.txt files or folders) and extract their concepts.

    The pseudonymisation secret (patient key, date shift) comes from
    ONCOPIPE_PSEUDONYM_SECRET (hex) or PSEUDONYM_SECRET_ARN. A note that cannot be read
    (empty, binary, no patient) is reported by file and skipped; exit 1 if any was.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from oncopipe.notes.core import concept_rows, notes_schema, process_note
    from oncopipe.pseudonym import load_secret

    try:
        secret = load_secret()
    except OncopipeError as e:
        _fail(e)
    paths = sorted({p for i in inputs for p in ([i] if i.is_file() else i.rglob("*.txt"))})
    rows: list[dict[str, object]] = []
    refused = 0
    for path in paths:
        try:
            result = process_note(path.read_bytes(), str(path), secret=secret,
                                  fallback_patient_id=patient)  # fmt: skip
        except OncopipeError as e:
            refused += 1
            echo(f"refused {e}", err=True)
            continue
        rows += concept_rows(result)
        if result.decode_replaced:
            echo(f"{path}: not UTF-8, decoded with replacement characters", err=True)  # fmt: skip
        if scrubbed_out is not None:
            target = scrubbed_out / result.patient_key / f"{result.note_id}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(result.text, encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=notes_schema()), str(out), compression="zstd")
    echo(f"{out}: {len(rows)} concepts from {len(paths) - refused} notes"
                  + (f" ({refused} refused)" if refused else ""))  # fmt: skip
    if refused:
        sys.exit(1)


# -- multimodal model ---------------------------------------------------------------------
@main.command("synthetic-cohort")
@click.option("--patients", type=int, default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def synthetic_cohort(patients: int, seed: int, out: Path) -> None:
    """Write synthetic feature tables and labels (the stages' schemas) for the model.

    Labels follow a documented rule that needs all three modalities
    (oncopipe.cohort.synthetic.GROUND_TRUTH).
    """
    from oncopipe.cohort.synthetic import generate_tables, write_tables

    written = write_tables(generate_tables(patients, seed=seed), out)
    echo(f"{out}: {', '.join(sorted(p.name for p in written.values()))}")


@main.command("cohort")
@click.option("--input", "input_dir", type=click.Path(exists=True, file_okay=False,
              path_type=Path), required=True,
              help="Holds variants, radiomics, notes, labels (.parquet or folders).")  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Split seed.")
def cohort(input_dir: Path, out: Path, seed: int) -> None:
    """Join feature tables and labels into the training dataset (patient-level splits)."""
    from oncopipe.cohort.dataset import build_dataset_from_dir, write_dataset

    try:
        dataset = build_dataset_from_dir(input_dir, seed=seed)
    except OncopipeError as e:
        _fail(e)
    write_dataset(dataset, out)
    echo(f"{out}: {dataset.table.num_rows} patients {dataset.counts()}")


@main.command("train", context_settings={"ignore_unknown_options": True,
                                         "allow_extra_args": True})  # fmt: skip
@click.pass_context
def train_command(ctx: click.Context) -> None:
    """Train the multimodal model: the SageMaker script's arguments (see --help-script).

    Example: oncopipe train --train DATASET_DIR --model-dir MODEL --output-dir OUT
    [--epochs 16 --modalities genomics,radiomics,notes --checkpoint-dir CKPT].
    """
    from training.train import main as train_main

    args = list(ctx.args)
    if "--help-script" in args:
        args = ["--help"]
    sys.exit(train_main(args))


@main.command("evaluate")
@click.option("--dataset", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True)  # fmt: skip
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
def evaluate_command(dataset: Path, out: Path) -> None:
    """Ablations (each modality, pairs, all three) -> evaluation.json and roc.png."""
    from training.evaluate import evaluate, format_table

    report = evaluate(dataset, out)
    echo(format_table(report))
    echo(f"{out / 'evaluation.json'}, {out / 'roc.png'}")


@main.command("predict")
@click.option("--model-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              required=True)  # fmt: skip
@click.option("--input", "input_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), required=True,
              help="JSON: one patient's features or a list (the endpoint's request).")  # fmt: skip
def predict(model_dir: Path, input_file: Path) -> None:
    """Run the SageMaker serving handler locally on a JSON request."""
    import json

    from training.inference import RequestError, predict_local

    try:
        answer = predict_local(model_dir, input_file.read_bytes())
    except (RequestError, FileNotFoundError) as e:
        _fail(e)
    console.print_json(json.dumps(answer))


# -- sample sheet --------------------------------------------------------------------------
@main.command("validate-samplesheet")
@click.argument("sheet", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--base-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Check that the files the sheet names exist under this folder "
    "(the local copy of the ingest bucket). Default: the sheet's parent's parent.",
)
@click.option("--no-check-files", is_flag=True, help="Do not check that named files exist.")
@click.option(
    "--ingest-bucket",
    default=None,
    help="Name of the ingest bucket: the only bucket s3:// URIs of the sheet may name "
    "(they are checked as its keys). Without it every s3:// URI is refused.",
)
def validate_samplesheet(
    sheet: Path, base_dir: Path | None, no_check_files: bool, ingest_bucket: str | None
) -> None:
    """Validate a sample sheet; list every problem by line and column."""
    from oncopipe.samplesheet import SampleSheetError, parse_samplesheet

    base = base_dir or sheet.resolve().parent.parent
    exists = None if no_check_files else (lambda key: (base / key).is_file())
    prefix_exists = None if no_check_files else (lambda key: (base / key).is_dir())
    try:
        parsed = parse_samplesheet(
            sheet.read_bytes(),
            source=str(sheet),
            exists=exists,
            prefix_exists=prefix_exists,
            ingest_bucket=ingest_bucket,
        )
    except SampleSheetError as e:
        err_console.print(e.report(), highlight=False)
        sys.exit(1)
    echo(f"{sheet}: valid, {len(parsed.rows)} samples of {len(parsed.patients())} patients")


if __name__ == "__main__":
    main()
