#!/usr/bin/env python3
"""Multimodal model benchmarks on a synthetic cohort, printed (nothing asserted).

1. Modality ablations: test-split AUC of one model per modality subset (7 rows, same split,
   same settings), plus the all-three model with one modality masked at inference.
   Goals: all three >= 0.85 AUC and >= best single modality + 0.10.
2. Training throughput: samples/s of each ablation model (CPU, this machine's threads).
3. One-patient latency (batch 1, one thread, >= 200 timed calls after warm-up) of the full
   model and of the structurally pruned model, timed alternately; test AUC of both.
   Goals: full p50 <= 20 ms; pruned >= 1.5x faster (p50) with AUC loss <= 0.01.
4. The serving path end to end (``input_fn`` -> ``predict_fn`` -> ``output_fn``) for one
   patient's JSON, and one Integrated Gradients explanation.

Usage: ``python benchmarks/model.py [--quick] [--patients N] [--seed S]``
(default 2,000 patients; ``--quick``: 1,000 patients, 8 epochs, 200 latency calls;
``--json PATH``: the results rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _bench (a PyPI package is "benchmarks")

import numpy as np
from _bench import Report

from oncopipe.cohort.dataset import build_dataset, patient_payloads, write_dataset
from oncopipe.cohort.synthetic import generate_tables


def _line(char: str = "-") -> str:
    return char * 78


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--patients", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the results rows here")
    args = parser.parse_args()
    out = Report("model", quick=args.quick)
    patients = args.patients or (1000 if args.quick else 2000)

    import torch

    from training.evaluate import evaluate_data, format_table
    from training.explain import explain_patient
    from training.fit import HyperParameters
    from training.inference import input_fn, model_fn, output_fn, predict_fn
    from training.model import save_model
    from training.prune import prune

    print(_line("="))
    print(
        f"multimodal response model - {patients} synthetic patients, seed {args.seed}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(_line("="))
    t0 = time.perf_counter()
    tables = generate_tables(patients, args.seed)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = build_dataset(
        tables.variants, tables.radiomics, tables.notes, tables.labels, seed=args.seed
    )
    t_build = time.perf_counter() - t0
    print(
        f"cohort: {tables.radiomics.num_rows:,} radiomic rows, {tables.variants.num_rows:,} "
        f"variant rows, {tables.notes.num_rows:,} note concepts; generated in {t_gen:.1f} s, "
        f"joined in {t_build:.1f} s; splits {ds.counts()}"
    )

    hp = HyperParameters(epochs=8) if args.quick else HyperParameters()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_dataset(ds, root / "dataset")
        report = evaluate_data(ds, root / "evaluation", hparams=hp)
        print()
        print("1. Modality ablations (test split)")
        print(_line())
        print(format_table(report))
        g = report["goals"]
        print(_line())
        print(
            f"all three: AUC {g['multimodal_auc']:.3f} (goal >= {g['auc_goal']:.2f}: "
            f"{'met' if g['meets_auc_goal'] else 'NOT met'}); best single "
            f"{g['best_single_modality']} {g['best_single_auc']:.3f}, margin "
            f"{g['margin']:+.3f} (goal >= +{g['margin_goal']:.2f}: "
            f"{'met' if g['meets_margin_goal'] else 'NOT met'})"
        )
        print(f"ablation wall time: {report['total_seconds']:.0f} s for 7 models")
        out.add(
            "multimodal test AUC",
            g["multimodal_auc"],
            g["best_single_auc"],
            ratio=g["margin"],
            goal=f">= {g['auc_goal']:.2f} and >= best single + {g['margin_goal']:.2f}",
            unit="AUC (ratio column: margin)",
            passed=bool(g["meets_auc_goal"] and g["meets_margin_goal"]),
            note=f"{patients} synthetic patients; best single {g['best_single_modality']}",
        )
        out.add("model step: ablation training wall time (7 models)", report["total_seconds"],
                None, unit="s", note=f"{hp.epochs} epochs, {patients} patients, CPU")  # fmt: skip

        print()
        print("2. Training throughput (samples/s, forward + backward + step)")
        print(_line())
        for name, row in report["ablations"].items():
            print(
                f"{name:<34}{row['samples_per_second']:>9.0f} samples/s"
                f"{row['train_seconds']:>8.1f} s train"
            )

        full_model = report["models"]["genomics+radiomics+notes"]
        model_dir = root / "model"
        save_model(full_model, model_dir, hparams=report["hparams"])
        (model_dir / "preprocess.json").write_text(ds.preprocessing.to_json())
        calls = 200 if args.quick else 300
        pr = prune(
            model_dir, root / "dataset", root / "pruned", latency_calls=calls, seed=args.seed
        )
        lat = pr["latency_ms"]
        kept = pr["kept"]
        print()
        print(f"3. One-patient latency (batch 1, 1 thread, {calls} calls) and pruning")
        print(_line())
        print(f"{'model':<10}{'params':>9}{'p50 ms':>9}{'p95 ms':>9}{'test AUC':>10}{'val AUC':>9}")
        for name in ("full", "pruned"):
            print(
                f"{name:<10}{pr['parameters'][name]:>9,}{lat[name]['p50_ms']:>9.2f}"
                f"{lat[name]['p95_ms']:>9.2f}{pr['test_auc'][name]:>10.3f}"
                f"{pr['validation_auc'][name]:>9.3f}"
            )
        print(_line())
        print(
            f"removed {kept['removed_blocks']} of {2 * len(kept['heads'])} blocks; heads kept "
            f"per layer {kept['heads']}, feed-forward units {kept['ff_units']}; distilled "
            f"fine-tune {pr['finetune']['epochs']} epochs; chosen on validation"
        )
        print(
            f"full p50 {lat['full']['p50_ms']:.2f} ms (goal <= 20 ms: "
            f"{'met' if lat['full']['p50_ms'] <= 20 else 'NOT met'}); speed-up "
            f"{pr['speedup_p50']:.2f}x (goal >= 1.5x: "
            f"{'met' if pr['speedup_p50'] >= 1.5 else 'NOT met'}); AUC loss "
            f"{pr['auc_loss']:+.4f} (goal <= 0.01: "
            f"{'met' if pr['auc_loss'] <= 0.01 else 'NOT met'})"
        )

        out.add("one-patient latency p50, full model", lat["full"]["p50_ms"], 20.0,
                goal="<= 20 ms", unit="ms", passed=lat["full"]["p50_ms"] <= 20)  # fmt: skip
        out.add("pruned vs full model p50 speed-up", pr["speedup_p50"], None,
                ratio=pr["speedup_p50"], goal=">= 1.5x, AUC loss <= 0.01", unit="x",
                passed=pr["speedup_p50"] >= 1.5 and pr["auc_loss"] <= 0.01,
                note=f"AUC loss {pr['auc_loss']:+.4f}")  # fmt: skip
        # 4. the serving path for one patient's raw JSON
        row = ds.split("test").to_pylist()[0]
        key = row["patient_key"]
        payload = patient_payloads(tables.variants, tables.radiomics, tables.notes, keys=[key])[key]
        body = json.dumps(payload)
        served = model_fn(model_dir)
        times = []
        for i in range(calls + 20):
            t0 = time.perf_counter()
            output_fn(predict_fn(input_fn(body, "application/json"), served), "application/json")
            if i >= 20:
                times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        explain_patient(served, row, steps=32)
        t_explain = time.perf_counter() - t0
        print()
        print("4. Serving path and explanation")
        print(_line())
        print(
            f"input_fn -> predict_fn -> output_fn, one patient ({len(body):,} bytes JSON, "
            f"{len(payload.get('radiomics', {}))} radiomic features): p50 "
            f"{1000 * np.percentile(times, 50):.2f} ms, "
            f"p95 {1000 * np.percentile(times, 95):.2f} ms"
        )
        print(f"Integrated Gradients explanation (32 steps): {t_explain:.2f} s per patient")
        out.add("serving path p50 (input_fn -> predict_fn -> output_fn)",
                1000 * float(np.percentile(times, 50)), None, unit="ms")  # fmt: skip
    out.write(args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
