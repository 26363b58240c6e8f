"""Every Lambda bundle installs for the runtime and fits Lambda's unzipped limit.

The bundler is run for real (pip against the package registry, the runtime's wheel tags,
``.build/lambda-deps`` as its cache): a requirement with no wheel for the runtime, or a
bundle over 250 MiB, would otherwise first fail at ``cdk deploy``. The drift function's
bundle, trimmed by ``UNUSED_PARTS``, is also run: it must import and read Parquet alone.
"""

from __future__ import annotations

import importlib.util
import io
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stacks import bundling
from stacks.paths import LAMBDAS_DIR

pytestmark = pytest.mark.slow

WITH_REQUIREMENTS = sorted(p.parent.name for p in LAMBDAS_DIR.glob("*/requirements.txt"))
#: The interpreter running the tests, as pip's ``--python-version`` spells it.
LOCAL_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
Bundle = Callable[..., Path]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """Return a builder of bundles, each (function, Python version) built once per module."""
    built: dict[tuple[str, str], Path] = {}

    def build(handler: str, python_version: str = bundling.PYTHON_VERSION) -> Path:
        if (handler, python_version) not in built:
            out = tmp_path_factory.mktemp(f"bundle-{handler}-py{python_version}")
            bundler = bundling.PipLocalBundling(LAMBDAS_DIR / handler,
                                                python_version=python_version)  # fmt: skip
            assert bundler.try_bundle(str(out), image=None)  # type: ignore[arg-type]
            built[(handler, python_version)] = out
        return built[(handler, python_version)]

    return build


@pytest.mark.parametrize("handler", WITH_REQUIREMENTS)
def test_bundle_installs_for_the_runtime_and_fits_lambda(handler: str, bundle: Bundle) -> None:
    out = bundle(handler)
    assert (out / "lambdas" / handler / "handler.py").is_file()
    assert (out / "oncopipe" / "__init__.py").is_file()
    # built for the runtime: compiled extensions carry its ABI tag, never this machine's
    abi = f"cpython-{bundling.PYTHON_VERSION.replace('.', '')}"
    extensions = list(out.rglob("*.so"))
    assert all(abi in p.name or "cpython" not in p.name for p in extensions)
    assert not list(out.rglob("tests/__init__.py"))  # test suites are left out
    assert bundling.bundle_size(out) < bundling.LAMBDA_UNZIPPED_LIMIT


def test_a_bundle_over_the_limit_names_the_function(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundling, "LAMBDA_UNZIPPED_LIMIT", 10)
    handler = next(p.parent.name for p in LAMBDAS_DIR.glob("*/handler.py"))
    with pytest.raises(bundling.BundleTooLargeError, match=f"lambdas/{handler}: .* MiB"):
        bundling.PipLocalBundling(LAMBDAS_DIR / handler).try_bundle(str(tmp_path), image=None)  # type: ignore[arg-type]


def test_the_drift_bundle_leaves_out_what_it_never_loads(bundle: Bundle) -> None:
    out = bundle("model_drift")
    pyarrow = out / "pyarrow"
    assert (pyarrow / "libarrow_python.so.2600").is_file()  # the copy the extensions load
    assert (pyarrow / "libarrow_substrait.so.2600").is_file()  # libarrow_python links it
    assert not list(pyarrow.glob("libarrow_flight*")) and not list(pyarrow.glob("libarrow_s3*"))
    assert not (pyarrow / "include").exists() and not list(pyarrow.rglob("*.pyx"))
    assert not (out / "scipy").exists()
    # headroom for growth: a pin bump should not be what breaks the deployment
    assert bundling.bundle_size(out) < bundling.LAMBDA_UNZIPPED_LIMIT - 15 * 2**20


def test_a_stale_unused_part_fails_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyarrow").mkdir()
    (tmp_path / "pyarrow" / "libarrow_flight.so.2600").write_bytes(b"x" * 10)
    monkeypatch.setitem(bundling.UNUSED_PARTS, "fn", (
        bundling.UnusedParts("pyarrow", ("libarrow_flight.so.*",), "test"),
        bundling.UnusedParts("pyarrow", ("_gone.so",), "test")))  # fmt: skip
    with pytest.raises(bundling.BundleLayoutError, match=r"lambdas/fn: pyarrow/_gone.so matches"):
        bundling.remove_unused_parts(tmp_path, "fn")
    assert not (tmp_path / "pyarrow" / "libarrow_flight.so.2600").exists()


def put_parquet(root: Path, key: str, rows: list[dict[str, Any]], schema: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
    path = root / "curated" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def put(root: Path, bucket: str, key: str, body: bytes) -> None:
    path = root / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


def drift_objects(root: Path) -> None:
    """A baseline with radiomics, notes and predictions monitors, and one day of each."""
    from oncopipe import catalog, layout
    from oncopipe.monitor import modalities as mod
    from oncopipe.monitor.job import baseline_document
    from oncopipe.notes.core import notes_schema
    from oncopipe.radiomics.core import schema as radiomics_schema
    from tests.adapters.test_monitor_modalities import (
        FEATURES,
        TOKENS,
        P,
        capture_line,
        note_rows,
        radiomics_rows,
        result,
    )

    rng = np.random.default_rng(17)
    baseline = baseline_document({}, model_package_arn="", features={
        **mod.radiomics_baseline(radiomics_rows(rng, 200), features=FEATURES),
        **mod.notes_baseline(note_rows(rng, 200, TOKENS, P)),
        **mod.predictions_baseline(rng.beta(2, 5, 200))})  # fmt: skip
    put(root, "artifacts", "monitor/baselines/v1/baseline.json", json.dumps(baseline).encode())
    radiomics = f"{layout.CURATED_IMAGING_RADIOMICS}pk1/1.2.3.parquet"
    rows = [{**r, "params_hash": "h", "run_id": "run-1"} for r in radiomics_rows(rng, 12)]
    put_parquet(root, radiomics, rows, radiomics_schema())
    concepts = f"{catalog.NOTE_CONCEPTS.prefix}pk1/note-1.parquet"
    mentions = [{**m, "numeric_value": None, "negated": False, "certainty": "certain",
                 "temporality": "current", "experiencer": "patient", "section": None,
                 "start": 0, "end": 1} for m in note_rows(rng, 12, TOKENS, P)]  # fmt: skip
    put_parquet(root, concepts, mentions, notes_schema())
    for table, key in (("radiomics", radiomics), ("note_concepts", concepts)):
        link = catalog.symlink_key(table, f"_manifests/run-1/{table}/item.json")
        put(root, "curated", link, catalog.symlink_body("curated", [key]))
    hour = datetime.now(UTC).strftime("%Y/%m/%d/%H")
    capture = "\n".join(capture_line(result(float(p))) for p in rng.beta(2, 5, 12))
    put(root, "artifacts", f"data-capture/serving-ep/pruned/{hour}/a.jsonl", capture.encode())


MANYLINUX = sys.platform == "linux" and platform.machine() == "x86_64" and (
    platform.libc_ver()[0] == "glibc")  # fmt: skip


@pytest.mark.skipif(not MANYLINUX, reason="the bundle holds manylinux x86_64 wheels; this "
                    f"machine ({sys.platform} {platform.machine()}) cannot load them")  # fmt: skip
def test_the_drift_bundle_alone_reads_the_tables_and_reports(
    bundle: Bundle, tmp_path: Path
) -> None:
    """The trimmed bundle imports pyarrow and runs the handler on every kind, venv excluded.

    Built for this interpreter (the runtime's pins, wheel platforms and ``UNUSED_PARTS``;
    the very bundle that deploys when this is the runtime's Python), since its extensions
    carry the interpreter's ABI tag.
    """
    out = bundle("model_drift", LOCAL_PYTHON)
    objects = tmp_path / "objects"
    drift_objects(objects)
    environment = {
        "PYTHONPATH": str(out), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
        "CURATED_BUCKET": "curated", "ARTIFACTS_BUCKET": "artifacts",
        "MODEL_PACKAGE_GROUP": "g", "ONCOPIPE_ENV": "test", "DRIFT_THRESHOLD": "0.03",
        "DRIFT_ALARM_WINDOWS": "1", "DRIFT_ALARM_OF_WINDOWS": "1", "DRIFT_MIN_SAMPLES": "5",
        "SERVING_ENDPOINT_NAME": "serving-ep", "MPLCONFIGDIR": str(tmp_path / "matplotlib"),
    }  # fmt: skip
    report = tmp_path / "smoke.json"
    # -S: no site-packages (the venv's), -s: no user site, -P: not the script's folder
    done = subprocess.run(
        [sys.executable, "-S", "-s", "-P", str(Path(__file__).with_name("drift_bundle_smoke.py")),
         str(objects), str(report)],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    smoke = json.loads(report.read_text())

    # isolated: the bundle and the standard library only, nothing of the venv
    assert smoke["flags"] == {"no_site": 1, "no_user_site": 1, "safe_path": True}
    assert smoke["sys_path"][0] == str(out)
    outside = [p for p in smoke["sys_path"][1:] if not p.startswith(sys.base_prefix)]
    assert outside == [] and not any("site-packages" in p for p in smoke["sys_path"])
    assert all(Path(f).is_relative_to(out) for f in smoke["files"].values()), smoke["files"]
    # importable here (dev dependencies), not there
    assert all(importlib.util.find_spec(m) for m in ("scipy", "boto3", "moto", "pytest"))
    assert smoke["importable"] == {"scipy": False, "boto3": False, "moto": False,
                                   "pytest": False}  # fmt: skip

    # every kind read and scored: no "pyarrow is not in the function's bundle"
    assert smoke["result"]["status"] == "evaluated" and smoke["result"]["not_read"] == {}
    kinds = smoke["report"]["kinds"]
    assert {k for k, v in kinds.items() if v["score"] is not None} == {
        "radiomics", "notes", "predictions"}  # fmt: skip
    samples = {r["monitor"]: r["samples"] for r in smoke["report"]["monitors"]}
    assert samples["radiomics/original_firstorder_Energy"] == 12
    assert samples["notes/concepts"] == 12 and samples["predictions/probability"] == 12
    assert {m["MetricName"] for m in smoke["metrics"]} >= {"DriftScore", "DriftWindowSamples"}
    assert smoke["png"].startswith("89504e47")  # matplotlib drew the report
