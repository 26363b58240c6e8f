"""The ``oncopipe`` command line. Every command has ``--help``.

Output goes to the terminal through rich; nothing printed carries PHI (object keys,
counts, pseudonymous keys and error reasons only).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from oncopipe.errors import OncopipeError

console = Console(stderr=False)
err_console = Console(stderr=True)


def _fail(error: Exception) -> None:
    from rich.markup import escape

    # the message is text, not markup (tool messages carry [brackets]); one line, unwrapped
    err_console.print(f"[bold red]error:[/] {escape(str(error))}", markup=True, highlight=False,
                      soft_wrap=True)  # fmt: skip
    sys.exit(1)


class _Commands(click.Group):
    """The top-level group: ``oncopipe model`` is imported only when it is used.

    Its governance module pulls in botocore (~20 ms of every other command's start-up,
    ``benchmarks/profiles.md``).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "model"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "model" and "model" not in self.commands:
            from oncopipe.model_cli import model  # oncopipe model list|approve|reject|rollback

            self.add_command(model)
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
    console.print(
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
    from oncopipe.genomics.fastq import MAX_LINE_BYTES, validate_pair

    try:
        with r1.open("rb") as h1, r2.open("rb") as h2:
            stats = validate_pair(h1, h2, name_1=str(r1), name_2=str(r2),
                                  max_line_bytes=max_line_bytes or MAX_LINE_BYTES)  # fmt: skip
        group = ReadGroup(id=sample, sample=patient_key or sample, library=sample)
        qc = align_pair(reference, r1, r2, out, read_group=group, threads=threads)
    except (OncopipeError, ValueError) as e:
        _fail(e)
    out.with_suffix(".qc.json").write_text(qc.to_json() + "\n", encoding="utf-8")
    console.print(f"{out}: {stats.reads} pairs, {qc.mapped_fraction:.1%} mapped, "
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
    console.print(f"{out}: {count} alleles called")


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
    console.print(f"{out}: {rows} rows")


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
            err_console.print(f"refused {e}", highlight=False, markup=False)
            continue
        written += 1
    console.print(f"{written} de-identified under {out}/, {refused} refused")
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
    console.print(f"{out}: {geometry.dimensions} voxels, spacing {geometry.spacing} mm, "
                  f"{size} bytes ({size / source:.0%} of the DICOM files)")  # fmt: skip
    if rtstruct or seg:
        from oncopipe.imaging.deid import read_dicom_file
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
        console.print(f"{target}: masks {', '.join(masks)}")


# -- radiomics ----------------------------------------------------------------------------
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
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)  # fmt: skip
    with progress:
        task = progress.add_task("radiomics (series)", total=len(jobs))
        for _, result in extract_many(jobs, parameters, workers=workers,
                                      progress=lambda *_: progress.advance(task)):  # fmt: skip
            if isinstance(result, RadiomicsError):
                failed.append(str(result))
            else:
                rows.extend(result.rows)
    for reason in failed:
        err_console.print(f"error: {reason}", highlight=False, markup=False)
    if rows:
        write_features(rows, out)
        rois = len({(r["series_key"], r["roi"]) for r in rows})
        console.print(f"{out}: {len(rows)} features of {rois} ROIs "
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
            err_console.print(f"refused {e}", highlight=False, markup=False)
            continue
        rows += concept_rows(result)
        if result.decode_replaced:
            err_console.print(f"{path}: not UTF-8, decoded with replacement characters",
                              highlight=False, markup=False)  # fmt: skip
        if scrubbed_out is not None:
            target = scrubbed_out / result.patient_key / f"{result.note_id}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(result.text, encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=notes_schema()), str(out), compression="zstd")
    console.print(f"{out}: {len(rows)} concepts from {len(paths) - refused} notes"
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
    console.print(f"{out}: {', '.join(sorted(p.name for p in written.values()))}")


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
    console.print(f"{out}: {dataset.table.num_rows} patients {dataset.counts()}")


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
    console.print(format_table(report), highlight=False, markup=False)
    console.print(f"{out / 'evaluation.json'}, {out / 'roc.png'}")


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
    console.print(
        f"{sheet}: valid, {len(parsed.rows)} samples of {len(parsed.patients())} patients"
    )


# -- local mode ----------------------------------------------------------------------------
@main.group()
def local() -> None:
    """The embedded local mode: every stage on your machine, no AWS account."""


@local.command("up")
@click.option("--env", "env", default=None, help="Environment of cdk.json (default: dev).")
@click.option(
    "--port",
    type=click.IntRange(1024, 65535),
    default=None,
    help="Port of the embedded endpoint (default: a free one).",
)
@click.option(
    "--external",
    is_flag=True,
    help="Do not start moto: create the resources on the endpoint of the standard "
    "AWS configuration (AWS_ENDPOINT_URL, AWS_PROFILE, AWS_REGION).",
)
@click.option(
    "--iam/--no-iam",
    default=True,
    show_default=True,
    help="Run each stage as its synthesized IAM role with the embedded endpoint's IAM "
    "enforcement on (a missing grant fails the run).",
)
def local_up(env: str | None, port: int | None, external: bool, iam: bool) -> None:  # fmt: skip
    """Start the embedded AWS endpoint and create the platform's resources."""
    from oncopipe.local import runner

    try:
        state = runner.up(env, port=port, external=external, iam=iam)
    except (OncopipeError, ValueError) as e:
        _fail(e)
    where = state.endpoint_url or "the endpoint of your AWS configuration"
    console.print(f"local mode up at {where} (env {state.env})")
    for zone in ("ingest", "quarantine", "curated", "artifacts"):
        console.print(f"  {zone:<10} s3://{getattr(state.buckets, zone)}")
    console.print(f"  catalog    {state.database}")
    if state.iam_enforced:
        console.print(f"  IAM        enforced: {len(state.stage_roles)} stages as their roles")


@local.command("run")
@click.option(
    "--cohort",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Upload this folder (laid out like the ingest bucket).",
)
@click.option(
    "--drain",
    is_flag=True,
    help="Upload nothing: process the events already queued, until idle.",
)
@click.option(
    "--run-id",
    default=None,
    help="Run ID (default: a new one). Re-using a finished run's ID skips every item already done.",
)
@click.option(
    "--patients",
    default=3,
    show_default=True,
    type=click.IntRange(1, 500),
    help="Patients of the generated cohort (without --cohort).",
)
@click.option(
    "--idle-timeout",
    default=20.0,
    show_default=True,
    type=float,
    help="Seconds without events after which the worker stops waiting.",
)
@click.option(
    "--settle-seconds",
    default=None,
    type=click.IntRange(0, 86_400),
    help="A DICOM series converts once no instance arrived for this long "
    "(default: 3 s locally; deployed: series_settle_seconds).",
)
def local_run(cohort: Path | None, drain: bool, run_id: str | None, patients: int,
              idle_timeout: float, settle_seconds: int | None) -> None:  # fmt: skip
    """Upload a cohort to the ingest bucket and process it like the cloud would."""
    from oncopipe.local import runner
    from oncopipe.local.state import LocalState, home
    from oncopipe.runs import new_run_id, validate_run_id
    from oncopipe.sample_data import generate, scan

    try:
        state = LocalState.load()
        run_id = validate_run_id(run_id) if run_id else new_run_id("local")
        if drain:
            files = None
        elif cohort:
            files = scan(cohort)
        else:
            files = generate(home() / "cohort", patients=patients)
            console.print(f"generated the sample cohort under {files.root}")
        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=console, transient=False,
        )  # fmt: skip
        with progress:
            report = runner.run(state, files, run_id, idle_timeout=idle_timeout,
                                progress=progress, settle_seconds=settle_seconds)  # fmt: skip
    except (OncopipeError, ValueError) as e:
        _fail(e)
    _print_report(report, state)
    if report.access_denied:
        # As in AWS: a missing grant fails the stage; here it fails the run, by name.
        console.print("[bold red]access denied[/] (a grant the stage's role lacks):")
        for denial in report.access_denied:
            console.print(f"  {denial}", highlight=False, markup=False)
        sys.exit(1)


def _print_report(report: object, state: object) -> None:
    from oncopipe.local.runner import RunReport
    from oncopipe.local.state import LocalState

    assert isinstance(report, RunReport) and isinstance(state, LocalState)
    table = Table(title=f"run {report.run_id}")
    for column in ("step", "kind", "items", "ok", "quarantined", "outputs", "seconds"):
        table.add_column(column, justify="left" if column in ("step", "kind") else "right")
    for row in report.rows:
        table.add_row(
            row.step, row.kind, str(row.items), str(row.succeeded), str(row.quarantined),
            str(row.outputs), f"{row.seconds:.2f}",
        )  # fmt: skip
    console.print(table)
    rejected = [e for e in report.executions if e.status == "FAILED"]
    orphans = [r for r in report.reconciled if r.summary.get("status") == "quarantined"]
    if rejected or orphans:
        console.print("[bold]quarantined[/] (copy and reason in "
                      f"s3://{state.buckets.quarantine}/{report.run_id}/):")  # fmt: skip
        for execution in rejected:
            reason = execution.route.get("reason") or execution.route.get("error", {}).get("Error")
            console.print(f"  {execution.outcome}: {reason}", highlight=False, markup=False)
            for detail in execution.route.get("details", [])[:8]:
                console.print(f"      {detail}", highlight=False, markup=False)
        for orphan in orphans:
            console.print(f"  reconcile: {orphan.summary['reason']}", highlight=False, markup=False)
    for job in report.jobs:
        if job.step == "volumes":
            for series in job.outcome.get("series", []):
                dims = "x".join(map(str, series.get("dimensions", [])))
                console.print(f"  volume {series.get('patient_key')} {dims} "
                              f"{series.get('status')} masks: {', '.join(series.get('rois', []))}",
                              highlight=False, markup=False)  # fmt: skip
        if job.step == "radiomics":
            for series in job.outcome.get("series", []):
                detail = (
                    f"{series.get('features')} features of {', '.join(series.get('rois', []))}"
                    if series.get("status") == "extracted"
                    else series.get("reason_code", "")  # the reason is in the manifest
                )
                console.print(f"  radiomics {series.get('patient_key', '')} "
                              f"{series.get('status')}: {detail}",
                              highlight=False, markup=False)  # fmt: skip
    settled = [o for o in report.series if o.status == "converted"]
    swept = [s for j in report.jobs if j.step == "volumes" and j.sample == report.run_id
             for s in j.outcome.get("series", []) if s.get("item_status") != "skipped"]  # fmt: skip
    console.print(f"{len(settled)} DICOM series converted when they settled (no instance for "
                  f"{report.settle_seconds}s), before the daily jobs; the daily imaging sweep "
                  f"had {len(swept)} series left to do", highlight=False, markup=False)  # fmt: skip
    failed_jobs = [j for j in report.jobs if j.exit_code != 0]
    for job in failed_jobs:
        failure = job.outcome.get("reason_code") or job.outcome.get("error", "")
        console.print(f"  {job.step} {job.sample} FAILED: {failure}",
                      highlight=False, markup=False)  # fmt: skip
    hotspots = [f"{j.sample}: {', '.join(j.outcome['hotspots'])}"
                for j in report.jobs if j.step == "call" and j.outcome.get("hotspots")]  # fmt: skip
    if hotspots:
        console.print(
            "[bold]hotspot variants[/] (genomics/variants/ Parquet, Glue table variants):"
        )
        for line in hotspots:
            console.print(f"  {line}", highlight=False, markup=False)
    _print_arrival(report)
    console.print(
        f"{len(report.executions)} ingest events and {len(report.jobs)} Batch/processing jobs in "
        f"{report.wall_seconds:.1f}s; manifests in "
        f"s3://{state.buckets.quarantine}/_manifests/{report.run_id}/ (routing, PHI zone) and "
        f"s3://{state.buckets.curated}/_manifests/{report.run_id}/ (stages)"
    )


def _print_arrival(report: Any) -> None:
    """Print the notes processed on arrival vs by the daily sweep, and each patient's state."""
    from oncopipe.local.arrival import ARRIVAL_STEP, processed_now

    on_arrival = sum(processed_now(j) for j in report.jobs if j.step == ARRIVAL_STEP)
    swept = sum(processed_now(j) for j in report.jobs if j.step == "notes")
    console.print(f"notes processed on arrival: {on_arrival}; by the daily sweep: {swept}",
                  highlight=False, markup=False)  # fmt: skip
    _print_patients(report.patients)


def _progress_line(line: str) -> None:
    """Print one progress line of a long local step (also readable in a log file)."""
    console.print(f"  {line}", highlight=False, markup=False, style="dim")


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the given libraries' loggers to ERROR for the block; restore them after.

    Each library is imported first: MLflow sets its loggers' levels when it is imported.
    """
    import importlib

    for name in names:
        importlib.import_module(name)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _print_patients(patients: Any) -> None:
    """Print each sheet patient's state: predicted (time to insight), waiting, no model."""
    for patient in patients:
        detail = {
            "waiting": f"waiting for {', '.join(patient.missing)}",
            "no-model": "complete; no model deployed (oncopipe local model)",
        }.get(patient.status, f"time to insight {patient.time_to_insight_seconds or 0:.1f}s")
        console.print(f"  patient {patient.patient_key} {patient.status}: {detail}",
                      highlight=False, markup=False)  # fmt: skip


@local.command("model")
@click.option("--patients", type=int, default=1000, show_default=True,
              help="Synthetic training patients.")  # fmt: skip
def local_model(patients: int) -> None:
    """Train, evaluate, explain and prune the model; score the local run's patients."""
    from oncopipe.local import runner
    from oncopipe.local.model_demo import run_model_demo
    from oncopipe.local.state import LocalState, home

    try:
        state = LocalState.load()
    except OncopipeError as e:
        _fail(e)
    store, _ = runner.clients(state)
    # MLflow's advice (pickle format, SageMaker packages not installed here) is about
    # serving from MLflow, which this demo does not do: errors only from its loggers.
    with _quiet_loggers("mlflow"):
        report = run_model_demo(home() / "model", patients=patients, store=store,
                                curated=state.buckets.curated, progress=_progress_line)  # fmt: skip
    console.print("[bold]ablations[/] (held-out test split of the synthetic cohort):")
    console.print(report.table, highlight=False, markup=False)
    g = report.goals
    if g:
        console.print(
            f"multimodal AUC {g['multimodal_auc']:.3f} (goal >= {g['auc_goal']}); best single "
            f"modality {g['best_single_modality']} {g['best_single_auc']:.3f}, margin "
            f"{g['margin']:+.3f} (goal >= +{g['margin_goal']})", highlight=False, markup=False,
        )  # fmt: skip
    p = report.prune
    console.print(
        f"pruned: AUC {p['test_auc']['pruned']:.3f} vs {p['test_auc']['full']:.3f}, "
        f"p50 {p['latency_ms']['pruned']['p50_ms']:.2f} ms vs "
        f"{p['latency_ms']['full']['p50_ms']:.2f} ms ({p['speedup_p50']:.2f}x faster)",
        highlight=False, markup=False,
    )  # fmt: skip
    for prediction in report.predictions:
        console.print(f"  {prediction.get('patient_key')}: response probability "
                      f"{prediction.get('response_probability'):.3f} "
                      f"(modalities {prediction.get('modalities_present')})",
                      highlight=False, markup=False)  # fmt: skip
    console.print(f"ROC plot {report.out / 'evaluation' / 'roc.png'}; explanations "
                  f"{report.out / 'evaluation' / 'explanations'} "
                  f"({len(report.explanations)} HTML reports); MLflow runs "
                  f"{report.out / 'mlruns'}", highlight=False, markup=False)  # fmt: skip
    # The model is deployed (locally) now: what the patient-ready function does on the next
    # event, for the latest run: its complete patients get a prediction and time to insight.
    run_id = _latest_run_or_none(store, [state.buckets.quarantine, state.buckets.curated])
    if run_id is not None:
        from botocore.exceptions import ClientError

        from oncopipe.local.arrival import patients_ready

        try:
            outcomes = patients_ready(state, run_id)
        except (OncopipeError, ClientError) as e:
            _fail(e)
        console.print(f"patients of run {run_id} with the model deployed:", highlight=False,
                      markup=False)  # fmt: skip
        _print_patients(outcomes)


def _line(line: str) -> None:
    """Print one line as it is (no markup, no highlighting, no wrapping)."""
    console.print(line, highlight=False, markup=False, soft_wrap=True)


@local.command("lifecycle")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True,
              help="Simulated days of uploads.")  # fmt: skip
@click.option("--shift", type=click.FloatRange(0.0, 1.0), default=0.12, show_default=True,
              help="VAF shift of the new sequencing platform (every clonal call).")  # fmt: skip
@click.option("--shift-day", type=click.IntRange(1, 366), default=10, show_default=True,
              help="The new platform's first day.")  # fmt: skip
@click.option("--samples-per-day", type=click.IntRange(1, 10_000), default=20, show_default=True,
              help="Samples uploaded a day.")  # fmt: skip
@click.option("--gap-day", type=click.IntRange(0, 366), default=None,
              help="A day without uploads: the window is not evaluated, the alarm clears "
              "(default: the day after the shift day; 0: none).")  # fmt: skip
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also run a no-shift control of the same length, from nothing.")  # fmt: skip
@click.option("--calendar/--no-calendar", default=False, show_default=True,
              help="lifecycle.retrain_schedule (calendar retrains) asks the gate too.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every simulation.")
@click.option("--patients", type=click.IntRange(100, 100_000), default=800, show_default=True,
              help="Patients of the synthetic training cohort.")  # fmt: skip
@click.option("--epochs", type=click.IntRange(1, 500), default=8, show_default=True,
              help="Training epochs (the pipeline's hyperparameter).")  # fmt: skip
def local_lifecycle(days: int, shift: float, shift_day: int, samples_per_day: int,
                    gap_day: int | None, control: bool, calendar: bool, seed: int,
                    patients: int, epochs: int) -> None:  # fmt: skip
    """The model lifecycle end to end: register, four eyes, deploy, drift, retrain gate.

    Runs on the endpoint of `local up` in buckets of its own (emptied first); writes the
    summary, the drift plots and the pipeline jobs' log under .oncopipe/local/lifecycle/.
    """
    from oncopipe.deployment import load_config, read_cdk_json
    from oncopipe.local.lifecycle import Endpoint, Options, run_lifecycle
    from oncopipe.local.state import LocalState, home

    try:
        state = LocalState.load()
        options = Options(days=days, shift=shift, shift_day=shift_day,
                          samples_per_day=samples_per_day, gap_day=gap_day, control=control,
                          calendar=calendar, seed=seed, patients=patients,
                          epochs=epochs)  # fmt: skip
        config = load_config(read_cdk_json(), state.env)
    except OncopipeError as e:
        _fail(e)
    # the pipeline's jobs reach the endpoint as the local worker (MLflow off: no server)
    jobs = {k: v for k, v in state.handler_env().items() if k.startswith("AWS_")}
    endpoint = Endpoint(state.client_kwargs(), {**jobs, "MLFLOW_TRACKING_URI": ""})
    out = home() / "lifecycle"
    out.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with (out / "jobs.log").open("w", encoding="utf-8") as job_log:
        # the jobs' and the cores' logs go to the log, as a container's go to CloudWatch
        handler = logging.StreamHandler(job_log)
        level = root.level
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        logging.captureWarnings(True)
        try:
            report = run_lifecycle(options, config=config, endpoint=endpoint, out=out,
                                   job_log=job_log, say=_line)  # fmt: skip
        except OncopipeError as e:
            _fail(e)
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            root.setLevel(level)
    drift = report.drift.as_dict(shift_day)
    delay = drift["detection_delay_days"]
    retrains = [d for d in drift["gate_decisions"] if d["outcome"] == "triggered"]
    skips = [f"{d['reason']} ({d['source']})" for d in drift["gate_decisions"]
             if d["outcome"] != "triggered"]  # fmt: skip
    verdict = "met" if delay is not None and delay <= 3 else "MISSED"
    caught = (f"alarmed in the window of day {drift['detection_day']}: {delay} day(s)"
              if delay is not None else f"was not caught in {days} days")  # fmt: skip
    _line(f"detection: the shift of day {shift_day} {caught} (goal <= 3: {verdict}); "
          f"retrains started: {len(retrains)}; skipped: {', '.join(skips) or 'none'}")  # fmt: skip
    if report.control is not None:
        alarms = report.control.as_dict(shift_day)["alarm_days"]
        _line(f"control (no shift, {days} days): {len(alarms)} alarm(s)"
              + (f" on day(s) {', '.join(map(str, alarms))}" if alarms else ""))  # fmt: skip
    for plot in report.plots:
        _line(f"drift plot {plot}")
    _line(f"summary {report.summary}; pipeline jobs' log {out / 'jobs.log'}; "
          f"{report.seconds:.0f} s")  # fmt: skip


@local.command("status")
def local_status() -> None:
    """Show the endpoint, object counts per zone and the runs found."""
    from oncopipe.local import runner, server
    from oncopipe.local.state import LocalState

    try:
        state = LocalState.load()
    except OncopipeError as e:
        _fail(e)
    alive = state.server_pid is None or server.is_running(state.server_pid)
    health = "running" if alive else "NOT running: run `oncopipe local up`"
    console.print(f"endpoint: {state.endpoint_url or 'AWS configuration'} ({health})")
    if not alive:
        sys.exit(1)
    for zone, count in runner.bucket_counts(state).items():
        console.print(f"  {zone:<10} {count:>5} objects")
    for run_id, manifests in sorted(runner.runs(state).items()):
        console.print(f"  run {run_id}: {manifests} manifests")


@local.command("down")
def local_down() -> None:
    """Stop the embedded endpoint (its data is in memory and goes with it)."""
    from oncopipe.local import runner

    stopped = runner.down()
    console.print("local mode stopped" if stopped else "local mode was not running")


# -- operations ----------------------------------------------------------------------------
@main.group()
def ops() -> None:
    """Operate the deployed platform in an AWS account."""


@ops.command("drift")
@click.option("--env", "env", default=None, help="Environment of cdk.json (default: dev).")
@click.option(
    "--stack",
    "stacks",
    multiple=True,
    help="Only this stack of the app (repeatable; default: every stack).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["md", "json", "html"]),
    default="md",
    show_default=True,
    help="Report format.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report to this file (default: standard output).",
)
@click.option(
    "--fail-on",
    "fail_on",
    type=click.Choice(["critical", "any", "never"]),
    default="critical",
    show_default=True,
    help="Exit 1 on a critical drift / on any drift not in drift_allow_list.",
)
@click.option(
    "--timeout",
    "timeout_min",
    type=click.FloatRange(0.1, 360),
    default=30,
    show_default=True,
    help="Minutes to wait for CloudFormation's detection.",
)
@click.option(
    "--poll",
    "poll_s",
    type=click.FloatRange(1, 300),
    default=10,
    show_default=True,
    help="Seconds between two status calls.",
)
@click.option("--region", default=None, help="AWS region (default: the AWS configuration).")
def ops_drift(
    env: str | None,
    stacks: tuple[str, ...],
    fmt: str,
    output: Path | None,
    fail_on: str,
    timeout_min: float,
    poll_s: float,
    region: str | None,
) -> None:
    """CloudFormation drift of the app's stacks (and their nested stacks): one report with
    severities, the allow-list of cdk.json and the coverage of the check.

    Exit code: 0 no drift that --fail-on counts, 1 drift, 2 detection errors (access
    denied, timeout, bad configuration). Progress goes to standard error."""
    from rich.markup import escape

    from oncopipe.deployment import ConfigurationError, load_config, read_cdk_json, stack_names
    from oncopipe.ops import drift
    from oncopipe.ops.drift_report import RENDERERS

    def fail(message: str) -> None:
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False,
                          soft_wrap=True)  # fmt: skip
        sys.exit(2)

    def show(event: drift.Progress) -> None:
        what = {
            "started": "detection started",
            "waiting": f"waiting for {event.detail} stack(s)",
            "finished": f"detection finished: {event.detail}",
            "not-deployed": "not deployed",
            "error": f"error ({event.detail})",
            "timed-out": "timed out",
        }.get(event.event, event.event)
        label = f"{event.stack}: " if event.stack else ""
        err_console.print(f"[{event.elapsed_s:5.0f} s] {label}{what}", markup=False,
                          highlight=False, soft_wrap=True)  # fmt: skip

    try:
        config = load_config(read_cdk_json(), env)
    except ConfigurationError as e:
        fail(str(e))
    names = stack_names(config)
    unknown = [s for s in stacks if s not in names]
    if unknown:
        fail(f"not a stack of the app: {', '.join(unknown)} (stacks: {', '.join(names)})")
    try:
        report = drift.detect(
            drift.make_cloudformation_client(region),
            [n for n in names if not stacks or n in stacks],
            allow_list=config.drift_allow_list,
            environment=config.name,
            poll_s=poll_s,
            timeout_s=timeout_min * 60,
            progress=show,
        )
    except drift.DriftDetectionError as e:
        fail(str(e))
    text = RENDERERS[fmt](report)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        err_console.print(f"report written to {output}", markup=False, highlight=False)
    else:
        click.echo(text, nl=False)
    for stack in report.errors:
        err_console.print(f"[bold red]error:[/] {escape(stack.name)}: {escape(stack.reason)}",
                          highlight=False, soft_wrap=True)  # fmt: skip
    code = report.exit_code(fail_on)  # type: ignore[arg-type]
    err_console.print(
        f"{report.drifted_resources} drifted resources ({report.critical_resources} critical), "
        f"{len(report.errors)} detection errors: exit {code} (--fail-on {fail_on})",
        markup=False, highlight=False,
    )  # fmt: skip
    sys.exit(code)


def _run_zones() -> tuple[Any, Any, bool]:
    """Return (object store, buckets, local) for the run commands: CURATED_BUCKET and
    QUARANTINE_BUCKET from the environment (the AWS configuration), else the local mode."""
    import os

    from oncopipe.layout import Buckets
    from oncopipe.settings import BUCKET_ENV
    from oncopipe.storage import ObjectStore, make_client

    names = {zone: os.environ.get(name, "") for zone, name in BUCKET_ENV.items()}
    if names["curated"] and names["quarantine"]:
        return ObjectStore(make_client()), Buckets(**names), False
    from oncopipe.local import runner
    from oncopipe.local.state import LocalState

    try:
        state = LocalState.load()
    except OncopipeError as e:
        _fail(OncopipeError(f"{e} (or set CURATED_BUCKET and QUARANTINE_BUCKET)"))
    store, _ = runner.clients(state)
    return store, state.buckets, True


def _latest_run(store: Any, zones: list[str]) -> str:
    """Return the run whose manifests finished last (``oncopipe report latest``)."""
    run = _latest_run_or_none(store, zones)
    if run is None:
        _fail(OncopipeError("no run has manifests yet"))
    return str(run)


def _latest_run_or_none(store: Any, zones: list[str]) -> str | None:
    """Return the run whose manifests finished last, or None when no run has any."""
    import json as _json

    from oncopipe.manifest import MANIFEST_ROOT

    latest: dict[str, str] = {}
    for bucket in zones:
        for key in store.list_keys(bucket, f"{MANIFEST_ROOT}/"):
            run = key.split("/")[1]
            if run.startswith("_"):  # _symlinks: the tables, not a run
                continue
            finished = str(_json.loads(store.get_bytes(bucket, key)).get("finished_at", ""))
            latest[run] = max(latest.get(run, ""), finished)
    if not latest:
        return None
    return max(latest, key=lambda r: latest[r])


@ops.command("cost")
@click.option("--run", "run_id", required=True, help="Run ID.")
@click.option("--no-actual", is_flag=True, help="Do not query Cost Explorer (estimates only).")
def ops_cost(run_id: str, no_actual: bool) -> None:
    """Cost per sample and stage of a run: the manifests' estimates beside the actual from
    Cost Explorer (by the oncopipe:run-id, oncopipe:stage and oncopipe:sample tags)."""
    import boto3

    from oncopipe.ops import cost, cost_report

    store, buckets, local_mode = _run_zones()
    ce = None
    if not (no_actual or local_mode):
        ce = boto3.client("ce", region_name=cost.COST_EXPLORER_REGION)
    zones = [buckets.curated, buckets.quarantine]
    manifests = list(cost_report.iter_run_manifests(store, zones, run_id))
    report = cost_report.cost_report(run_id, manifests, ce)
    table = Table(title=f"cost of run {run_id} (USD)")
    for column in ("stage", "sample", "items", "estimate", "actual"):
        table.add_column(column, justify="left" if column in ("stage", "sample") else "right")
    for row in report.rows:
        table.add_row(row.stage, row.sample, str(row.items),
                      "-" if row.estimate_usd is None else f"{row.estimate_usd:.4f}",
                      "-" if row.actual_usd is None else f"{row.actual_usd:.4f}")  # fmt: skip
    if report.rows:
        console.print(table)
    else:
        console.print(f"no job of run {run_id} recorded a cost estimate in its manifest",
                      highlight=False, markup=False)  # fmt: skip
    total = f"estimate {report.estimate_total:.4f} USD"
    if report.actual_total is not None:
        total += f", actual {report.actual_total:.4f} USD"
    console.print(total, highlight=False, markup=False)
    if report.price_as_of:
        console.print(f"prices as of {', '.join(report.price_as_of)} (oncopipe/ops/prices.csv)",
                      highlight=False, markup=False)  # fmt: skip
    note = "estimates only: local mode has no Cost Explorer" if local_mode else report.note
    if note:
        console.print(note, highlight=False, markup=False)


@main.command("report")
@click.argument("run_id", metavar="RUN")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="HTML file to write (one self-contained page).")  # fmt: skip
@click.option("--plot", "plots", multiple=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PNG plot to embed (repeatable; default: the local model's plots).")  # fmt: skip
@click.option("--drift", "drift_json", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="JSON of `oncopipe ops drift --format json` to show.")  # fmt: skip
@click.option("--no-actual", is_flag=True, help="Do not query Cost Explorer (estimates only).")
def report_command(run_id: str, out: Path, plots: tuple[Path, ...], drift_json: Path | None,
                   no_actual: bool) -> None:  # fmt: skip
    """Write the run report of RUN (a run ID, or `latest`): items per stage, quarantines
    (reason codes), durations, cost, time to insight per pseudonymous patient, drift status
    and plots, as one self-contained HTML page."""
    import json

    import boto3

    from oncopipe.ops import cost
    from oncopipe.ops.report import collect, drift_rows, write_report

    store, buckets, local_mode = _run_zones()
    if run_id == "latest":
        run_id = _latest_run(store, [buckets.quarantine, buckets.curated])
    if not plots and local_mode:
        from oncopipe.local.state import home

        plots = tuple(sorted((home() / "model" / "evaluation").glob("*.png")))
    drift, drift_note = None, None
    if drift_json is not None:
        try:
            drift, drift_note = drift_rows(json.loads(drift_json.read_text(encoding="utf-8")))
        except (ValueError, AttributeError) as e:
            _fail(ValueError(f"{drift_json}: not the JSON of `oncopipe ops drift` ({e})"))
    ce = None if (no_actual or local_mode) else boto3.client(
        "ce", region_name=cost.COST_EXPLORER_REGION)  # fmt: skip
    try:
        data = collect(store, buckets, run_id, cost_explorer=ce, drift=drift,
                       drift_note=drift_note, plots=plots)  # fmt: skip
    except (OncopipeError, ValueError) as e:
        _fail(e)
    path = write_report(data, out)
    console.print(f"run report {path}", highlight=False, markup=False)


if __name__ == "__main__":
    main()
