"""Multimodal model: training, checkpoints, MLflow, ablations, explanations, pruning, serving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from oncopipe.cohort.columns import radiomic_feature_names  # noqa: E402
from oncopipe.cohort.dataset import (  # noqa: E402
    build_dataset,
    patient_payloads,
    read_dataset,
    write_dataset,
)
from oncopipe.cohort.synthetic import generate_tables  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from training.data import encode_rows, modality_dropout  # noqa: E402
from training.fit import HyperParameters, fit, predict, roc_auc  # noqa: E402
from training.train import train  # noqa: E402

# two image types (13 radiomic groups) keep the tests fast; both carry the heterogeneity signal
FEATURES = [
    f for f in radiomic_feature_names() if f.startswith(("original_", "log-sigma-1-0-mm-3D_"))
]
FAST = HyperParameters(epochs=12, batch_size=32, lr=3e-3, layers=2, threads=1, seed=0)


@pytest.fixture(scope="module")
def cohort() -> Any:
    tables = generate_tables(900, seed=11, features=FEATURES)
    ds = build_dataset(
        tables.variants,
        tables.radiomics,
        tables.notes,
        tables.labels,
        seed=0,
        fractions=(0.6, 0.2, 0.2),
    )
    return tables, ds


@pytest.fixture(scope="module")
def dataset_dir(cohort: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    write_dataset(cohort[1], out)
    return out


@pytest.fixture(scope="module")
def encoded(cohort: Any) -> dict[str, Any]:
    ds = cohort[1]
    return {s: encode_rows(ds.split(s), ds.preprocessing) for s in ("train", "validation", "test")}


@pytest.fixture(scope="module")
def ablation(cohort: Any, encoded: dict[str, Any]) -> dict[str, Any]:
    """One model per single modality and one on all three (same split, same settings)."""
    prep = cohort[1].preprocessing
    models = {}
    for modalities in (["genomics"], ["radiomics"], ["notes"], ["genomics", "radiomics", "notes"]):
        hp = HyperParameters(**{**FAST.__dict__, "modalities": modalities})
        models["+".join(modalities)] = fit(encoded["train"], encoded["validation"], prep, hp).model
    return models


@pytest.fixture(scope="module")
def model_dir(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    train(dataset_dir, out, hparams=HyperParameters(**{**FAST.__dict__, "epochs": 8}))
    return out


def _eval_sets(encoded: dict[str, Any]) -> tuple[Any, Any]:
    return encoded["test"], encoded["test"].labels


def test_training_is_deterministic_with_a_seed(cohort: Any, encoded: dict[str, Any]) -> None:
    prep = cohort[1].preprocessing
    hp = HyperParameters(**{**FAST.__dict__, "epochs": 2})
    a = fit(encoded["train"], encoded["validation"], prep, hp).model.state_dict()
    b = fit(encoded["train"], encoded["validation"], prep, hp).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = HyperParameters(**{**FAST.__dict__, "epochs": 2, "seed": 1})
    c = fit(encoded["train"], encoded["validation"], prep, other).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_modality_dropout_never_drops_every_modality() -> None:
    rng = np.random.default_rng(0)
    present = np.ones((5000, 3), bool)
    present[::3, 1] = False
    out = modality_dropout(present, 0.9, rng)
    assert out.any(axis=1).all()
    assert not (out & ~present).any()  # never switches a missing modality on
    assert 0.3 < 1 - out[present].mean() < 0.9


def test_multimodal_model_beats_every_single_modality(
    ablation: dict[str, Any], encoded: dict[str, Any]
) -> None:
    data, y = _eval_sets(encoded)
    aucs = {name: roc_auc(y, predict(m, data)) for name, m in ablation.items()}
    full = aucs.pop("genomics+radiomics+notes")
    # measured (cohort seeds 11-13): all three 0.82-0.88, best single 0.73-0.81, margin
    # 0.07-0.09 on 180 test patients
    assert full > 0.75
    assert full > max(aucs.values()) + 0.05, (full, aucs)


def test_a_missing_modality_still_gives_a_prediction(
    ablation: dict[str, Any], encoded: dict[str, Any]
) -> None:
    model = ablation["genomics+radiomics+notes"]
    data, y = _eval_sets(encoded)
    full = predict(model, data)
    for j in range(3):
        present = data.present.copy()
        present[:, j] = False
        p = predict(model, data, present=present)
        assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
        assert roc_auc(y, p) > 0.6  # degrades, does not collapse
    nothing = predict(model, data, present=np.zeros_like(data.present))
    assert np.isfinite(nothing).all()
    assert not np.allclose(full, nothing)


def test_train_writes_model_config_preprocess_metrics_and_mlflow(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{store}")
    # train() sets MLFLOW_ALLOW_FILE_STORE for file: stores; monkeypatch restores it after
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "placeholder")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    hp = HyperParameters(**{**FAST.__dict__, "epochs": 2})
    result = train(
        dataset_dir,
        tmp_path / "model",
        output_dir=tmp_path / "out",
        hparams=hp,
        experiment="test-exp",
    )
    model = tmp_path / "model"
    assert {"model.pt", "config.json", "preprocess.json"} <= {p.name for p in model.iterdir()}
    assert json.loads((model / "config.json").read_text())["d_model"] == hp.d_model
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["samples_per_second"] > 0
    assert metrics["mlflow_run_id"] == result.metrics["mlflow_run_id"]
    import mlflow

    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.data.params["lr"] == str(hp.lr) and run.data.params["modalities"]
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "val_auc")
    assert [m.step for m in history] == [1, 2]
    assert list(store.rglob("MLmodel")), "the model was not logged"
    assert os.environ.get("MLFLOW_ALLOW_FILE_STORE") == "true"


def _train_cmd(dataset_dir: Path, out: Path, ckpt: Path) -> list[str]:
    script = str(REPO / "training" / "train.py")
    folders = ["--train", str(dataset_dir), "--model-dir", str(out / "model"),
               "--output-dir", str(out / "output"), "--checkpoint-dir", str(ckpt)]  # fmt: skip
    settings = "--epochs 6 --batch-size 8 --layers 1 --threads 1 --log-level WARNING"
    return [sys.executable, script, *folders, *settings.split()]


def test_training_resumes_after_sigkill_with_identical_weights(
    dataset_dir: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW", "SM_"))}
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(_train_cmd(dataset_dir, tmp_path / "a", ckpt), env=env)
    try:
        deadline = time.monotonic() + 60
        while not (ckpt / "checkpoint.pt").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # a spot interruption gives no warning here
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = torch.load(ckpt / "checkpoint.pt", weights_only=True)
    assert 1 <= saved["epoch"] < 6 and saved["optimizer"]["state"]
    assert not (tmp_path / "a" / "model" / "model.pt").exists()

    subprocess.run(_train_cmd(dataset_dir, tmp_path / "a", ckpt), env=env, check=True)
    resumed = json.loads((tmp_path / "a" / "output" / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] >= 1 and len(resumed["history"]) == 6

    subprocess.run(
        _train_cmd(dataset_dir, tmp_path / "b", tmp_path / "ckpt-b"), env=env, check=True
    )
    a = torch.load(tmp_path / "a" / "model" / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_explanations_put_kras_first_for_g12c_responders(
    ablation: dict[str, Any], cohort: Any, tmp_path: Path
) -> None:
    from training.data import RadiomicLayout
    from training.explain import explain_patient, write_explanation
    from training.inference import LoadedModel

    ds = cohort[1]
    prep = ds.preprocessing
    loaded = LoadedModel(
        ablation["genomics+radiomics+notes"],
        prep,
        RadiomicLayout.from_features(prep.radiomic_features),
        tmp_path,
    )
    rows = [
        r
        for r in ds.split("test").to_pylist()
        if r["response"] == 1
        and "KRAS G12C" in r["variant_alterations"]
        and len(r["variant_alterations"]) >= 3
    ]
    assert len(rows) >= 5
    hits = 0
    for row in rows[:8]:
        expl = explain_patient(loaded, row, steps=24)
        top = [v["alteration"] for v in expl["variants"][:3]]
        hits += "KRAS G12C" in top
        assert expl["convergence_delta"] < 0.05  # attributions add up to the logit change
        spans = {(n["note_id"], n["start"], n["end"]) for n in expl["notes"]}
        assert spans == set(zip(row["note_ids"], row["note_starts"], row["note_ends"], strict=True))
    assert hits >= 0.75 * min(8, len(rows))
    path = write_explanation(expl, tmp_path / "explanations")
    assert path.name == f"{row['patient_key']}.json"
    html_text = path.with_suffix(".html").read_text()
    assert "KRAS G12C" in html_text and "<script" not in html_text and "http" not in html_text


def test_html_report_escapes_text() -> None:
    from training.explain import render_html

    expl = {
        "patient_key": "pk-<script>alert(1)</script>",
        "response_probability": 0.5,
        "convergence_delta": 0.0,
        "method": "ig",
        "modalities_present": ["notes"],
        "modality_attribution": {"notes": 0.1},
        "variants": [{"gene": "<b>", "alteration": "A&B", "vaf": 0.1, "attribution": 0.1}],
        "radiomic_groups": [],
        "notes": [
            {
                "token": "biomarker=<img src=x>",
                "flags": [],
                "note_id": 'n"1',
                "start": 1,
                "end": 2,
                "attribution": -0.1,
            }
        ],
    }
    page = render_html(expl)
    assert "<script>" not in page and "<img" not in page and "<b>" not in page
    assert "&lt;script&gt;" in page and "A&amp;B" in page and "&lt;img src=x&gt;" in page


def test_pruned_model_is_smaller_and_predicts_close(
    model_dir: Path, dataset_dir: Path, tmp_path: Path
) -> None:
    from training.model import load_model
    from training.prune import prune

    report = prune(
        model_dir,
        dataset_dir,
        tmp_path / "pruned",
        remove_blocks=[3],
        finetune_epochs=2,
        latency_calls=50,
    )
    assert report["kept"]["removed_blocks"] == 3
    assert report["parameters"]["pruned"] < report["parameters"]["full"]
    assert abs(report["auc_loss"]) < 0.05
    full, pruned = load_model(model_dir), load_model(tmp_path / "pruned")
    assert full.parameter_count() == report["parameters"]["full"]
    assert pruned.parameter_count() == report["parameters"]["pruned"]

    def blocks(m: Any) -> int:
        return sum((layer.qkv is not None) + (layer.ff1 is not None) for layer in m.layers)

    assert blocks(pruned) == blocks(full) - 3
    kept_ff = [layer.ff1.out_features for layer in pruned.layers if layer.ff1 is not None]
    assert all(f < full.config.ff for f in kept_ff)  # physically smaller Linear layers
    ds = read_dataset(dataset_dir)
    data = encode_rows(ds.split("test"), ds.preprocessing)
    diff = np.abs(predict(full, data) - predict(pruned, data))
    assert float(np.mean(diff)) < 0.08
    assert report["latency_ms"]["pruned"]["p50_ms"] > 0
    # the evaluation step puts the pruned-vs-full comparison on the registered version
    import shutil

    from training.evaluate import SERVING_KEYS, score

    packaged = tmp_path / "packaged"
    shutil.copytree(model_dir, packaged)
    shutil.copytree(tmp_path / "pruned", packaged / "pruned")
    evaluation = score(packaged, dataset_dir, tmp_path / "evaluation")
    assert set(evaluation["serving"]) == set(SERVING_KEYS)
    assert evaluation["serving"]["speedup_p50"] == report["speedup_p50"]
    assert evaluation["serving"]["latency_ms"]["full"]["p50_ms"] > 0
    written = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert written["serving"]["test_auc"] == report["test_auc"]
    assert "serving" not in score(model_dir, dataset_dir, tmp_path / "e2")  # not packaged
    (packaged / "pruned" / "prune_report.json").write_text('{"latency_ms": {}}')
    with pytest.raises(ValueError, match=r"prune_report\.json: the pruning report lacks"):
        score(packaged, dataset_dir, tmp_path / "e3")


def test_inference_handler_round_trip_matches_training_preprocessing(
    model_dir: Path, cohort: Any
) -> None:
    from training.inference import input_fn, model_fn, output_fn, predict_fn, predict_local

    tables, ds = cohort
    rows = ds.split("test").to_pylist()[:4]
    keys = [r["patient_key"] for r in rows]
    by_key = patient_payloads(tables.variants, tables.radiomics, tables.notes, keys=keys)
    payloads = [by_key[k] for k in keys]
    assert json.loads(json.dumps(payloads)) == payloads  # plain JSON types
    model = model_fn(model_dir)
    body = output_fn(
        predict_fn(input_fn(json.dumps(payloads), "application/json"), model), "application/json"
    )
    served = json.loads(body)
    expected = predict(model.model, encode_rows(rows, model.preprocessing))
    assert [s["patient_key"] for s in served] == [r["patient_key"] for r in rows]
    assert np.allclose([s["response_probability"] for s in served], expected, atol=1e-5)
    one = predict_local(model_dir, payloads[0])
    assert one["patient_key"] == rows[0]["patient_key"]
    assert set(one["modalities_present"]) <= {"genomics", "radiomics", "notes"}
    # a patient with no modality at all still gets a probability
    empty = predict_local(model_dir, {"patient_key": "pk-aaaaaaaaaaaaaaaa"})
    assert empty["modalities_present"] == [] and 0 < empty["response_probability"] < 1


def test_inference_rejects_bad_requests(model_dir: Path) -> None:
    from training.inference import RequestError, input_fn, model_fn, output_fn, predict_fn

    with pytest.raises(RequestError, match="unsupported content type 'text/csv'"):
        input_fn("a,b", "text/csv")
    with pytest.raises(RequestError, match="not JSON"):
        input_fn("{nope", "application/json")
    with pytest.raises(RequestError, match=r"patient 0: variants\[0\] needs a string 'gene'"):
        input_fn(json.dumps({"variants": [{"vaf": 0.2}]}), "application/json")
    with pytest.raises(RequestError, match="non-empty list"):
        input_fn("[]", "application/json; charset=utf-8")
    model = model_fn(model_dir)
    data = input_fn(json.dumps({"radiomics": {"not_a_feature": 1.0}}), "application/json")
    with pytest.raises(RequestError, match="none of the radiomic features"):
        predict_fn(data, model)
    ok = predict_fn(input_fn("{}", "application/json"), model)
    with pytest.raises(RequestError, match="accept"):
        output_fn(ok, "text/html")
    assert isinstance(RequestError("x"), ValueError)


def test_serving_runs_the_torch_version_that_trains() -> None:
    """The image that serves is the image that trains: one torch pin, the one tested here."""
    import re

    import torch

    repo = Path(__file__).resolve().parents[2]
    pins = {}
    for name in ("training/requirements.txt", "requirements.txt"):
        found = re.search(r"^torch==([\w.]+)\s*$", (repo / name).read_text(), re.MULTILINE)
        assert found, f"{name} pins no torch version"
        pins[name] = found[1]
    assert len(set(pins.values())) == 1, pins
    assert torch.__version__.split("+")[0] == pins["training/requirements.txt"]
    dockerfile = (repo / "training/Dockerfile").read_text()
    assert "exec python -m training.serve" in dockerfile and "/usr/local/bin/serve" in dockerfile


def test_the_model_server_answers_sagemakers_container_contract(
    model_dir: Path, cohort: Any
) -> None:
    """/ping and /invocations over HTTP, as SageMaker calls a `serve` container."""
    import threading
    import urllib.error
    import urllib.request

    from training.serve import MAX_BODY_BYTES, make_server

    tables, ds = cohort
    keys = [r["patient_key"] for r in ds.split("test").to_pylist()[:3]]
    by_key = patient_payloads(tables.variants, tables.radiomics, tables.notes, keys=keys)
    server = make_server(str(model_dir), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    def post(body: bytes, content_type: str = "application/json") -> tuple[int, str]:
        request = urllib.request.Request(f"{base}/invocations", data=body, method="POST",
                                         headers={"Content-Type": content_type})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=10) as answer:
            assert answer.status == 200
        status, body = post(json.dumps([by_key[k] for k in keys]).encode())
        assert status == 200
        served = json.loads(body)
        assert [s["patient_key"] for s in served] == keys
        from training.inference import predict_local

        expected = [predict_local(model_dir, by_key[k])["response_probability"] for k in keys]
        assert np.allclose([s["response_probability"] for s in served], expected, atol=1e-6)
        # a bad payload: 400 naming the field, never echoing the patient's values
        status, body = post(json.dumps({"variants": [{"vaf": 0.123456}]}).encode())
        assert status == 400 and "gene" in body and "0.123456" not in body
        status, _ = post(b"a,b", "text/csv")
        assert status == 400
        # over SageMaker's 6 MB payload limit: refused before the body is read
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        connection.endheaders(b"[]")
        assert connection.getresponse().status == 413
        connection.close()
    finally:
        server.shutdown()
        server.server_close()
