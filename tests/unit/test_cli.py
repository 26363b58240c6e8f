"""The command line: --help everywhere, sample data, sample sheet validation."""

from __future__ import annotations

import gzip
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from oncopipe.cli import main
from oncopipe.sample_data import generate


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    context = click.Context(group)
    for name in group.list_commands(context):  # lazily loaded groups (model) too
        command = group.get_command(context, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("path", _commands(main), ids=lambda p: " ".join(p) or "oncopipe")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_sample_data_is_deterministic_and_valid(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", patients=2, depth=10, seed=3)
    second = generate(tmp_path / "b", patients=2, depth=10, seed=3)
    assert first.all_keys == second.all_keys
    for key in first.all_keys:
        assert (tmp_path / "a" / key).read_bytes() == (tmp_path / "b" / key).read_bytes(), key
    fastq = gzip.decompress((tmp_path / "a" / "fastq/P001-T_R1.fastq.gz").read_bytes()).decode()
    lines = fastq.splitlines()
    assert lines[0].startswith("@P001-T") and len(lines[1]) == len(lines[3]) == 100
    assert (tmp_path / "a" / "_reference" / "panel.fa").exists()
    assert "KRAS\t334\t.\tG\tT" in (tmp_path / "a" / "_truth" / "P001-T.vcf").read_text()


def test_validate_samplesheet_ok_and_broken(tmp_path: Path) -> None:
    CliRunner().invoke(main, ["sample-data", "--out", str(tmp_path), "--depth", "10"])
    ok = CliRunner().invoke(
        main, ["validate-samplesheet", str(tmp_path / "samplesheets/cohort.csv")]
    )
    assert ok.exit_code == 0 and "valid, 6 samples of 3 patients" in ok.output
    bad = CliRunner().invoke(
        main, ["validate-samplesheet", str(tmp_path / "samplesheets/broken.csv")]
    )
    assert bad.exit_code == 1
    assert "line 4, column type: type 'metastasis' is not one of" in bad.output
    assert "line 5, column fastq_1: file fastq/missing_R1.fastq.gz does not exist" in bad.output
    assert "MRN-" not in bad.output
