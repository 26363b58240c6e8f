"""Per-patient explanations: which variants, radiomic groups and note concepts drove a score.

Method: captum's Integrated Gradients on the embedded token sequence (the input of the
encoder), from a baseline that keeps every token's structure (its modality type, radiomic
group and [CLS]/marker embeddings) and removes its content (gene, alteration, VAF, feature
values, concept, flags, number). A token's attribution is the sum over the embedding of
its Integrated Gradients, in logit units; the attributions add up to
``logit(patient) - logit(baseline)`` up to ``convergence_delta``. Positive values push
towards response.

Aggregated per patient into:

* ``variants``: one entry per somatic call (gene, alteration, VAF), highest first;
* ``radiomic_groups``: one per image type x feature class, by absolute attribution, each
  with its top features by gradient x input on the normalised values (a first-order
  split of the group's contribution between its features);
* ``notes``: one per concept mention with its note id and character span in the
  scrubbed note (the notes themselves are never read or copied).

:func:`explain` writes ``explanations/<patient_key>.json`` and a self-contained
``explanations/<patient_key>.html`` (inline CSS, no scripts or external assets, every
string HTML-escaped).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from oncopipe.cohort.preprocess import NOTE_FLAG_BITS

METHOD = "integrated gradients on token embeddings (captum), content-free baseline"
TOP_FEATURES = 3
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _flag_names(bits: int) -> list[str]:
    return [name for name, bit in NOTE_FLAG_BITS.items() if bits & bit]


def explain_patient(loaded: Any, row: Mapping[str, Any], *, steps: int = 32) -> dict[str, Any]:
    """Explain one patient's score.

    ``loaded`` is a :class:`training.inference.LoadedModel` (or anything with ``model``,
    ``preprocessing`` and ``layout``); ``row`` is a cohort row (``dataset.parquet``) or
    :meth:`Preprocessing.encode_patient` output with ``patient_key``.

    Returns: the explanation (see the module docstring) as a JSON-ready dict.
    """
    import torch
    from captum.attr import IntegratedGradients

    from training.data import MODALITIES, encode_rows

    model = loaded.model
    cfg = model.config
    model.eval()
    data = encode_rows(
        [dict(row)],
        loaded.preprocessing,
        max_variants=cfg.max_variants,
        max_notes=cfg.max_notes,
        layout=loaded.layout,
    )
    batch = data.batch([0])
    with torch.no_grad():
        embedded = model.embed(batch, with_base=True)
        assert embedded.base is not None
        logit = float(model.encode(embedded.tokens, embedded.mask)[0])
        base_logit = float(model.encode(embedded.base, embedded.mask)[0])
    mask = embedded.mask

    def forward(tokens: Any) -> Any:
        return model.encode(tokens, mask.expand(tokens.shape[0], -1))

    ig = IntegratedGradients(forward)
    attributions, delta = ig.attribute(
        embedded.tokens.detach(),
        baselines=embedded.base.detach(),
        n_steps=steps,
        internal_batch_size=steps,
        return_convergence_delta=True,
    )
    per_token = attributions.sum(-1)[0].detach().numpy()
    seg = embedded.segments
    present = dict(zip(MODALITIES, data.present[0].tolist(), strict=True))
    present = {m: bool(v) and m in cfg.modalities for m, v in present.items()}

    variants = []
    if "variants" in seg and present["genomics"]:
        scores = per_token[seg["variants"]]
        for j in range(int(data.n_variants[0])):
            variants.append(
                {
                    "gene": row["variant_genes"][j],
                    "alteration": row["variant_alterations"][j],
                    "vaf": float(row["variant_vafs"][j]),
                    "attribution": float(scores[j]),
                    "in_vocabulary": bool(data.alteration[0, j] > 1),
                }
            )
        variants.sort(key=lambda v: -v["attribution"])

    groups = []
    if "radiomics" in seg and present["radiomics"]:
        values = batch["radiomics"].clone().requires_grad_(True)
        out = model({**batch, "radiomics": values})
        (grad,) = torch.autograd.grad(out.sum(), values)
        contrib = (grad * values).detach().numpy()[0]
        scores = per_token[seg["radiomics"]]
        index = loaded.layout.index
        names = loaded.layout.features
        raw = values.detach().numpy()[0]
        for g, group in enumerate(loaded.layout.groups):
            slots = [s for s in range(index.shape[1]) if index[g, s] >= 0]
            top = sorted(slots, key=lambda s: -abs(contrib[g, s]))[:TOP_FEATURES]
            groups.append(
                {
                    "group": group,
                    "attribution": float(scores[g]),
                    "top_features": [
                        {
                            "feature": names[index[g, s]],
                            "value_z": float(raw[g, s]),
                            "contribution": float(contrib[g, s]),
                        }
                        for s in top
                    ],
                }
            )
        groups.sort(key=lambda x: -abs(x["attribution"]))

    notes = []
    if "notes" in seg and present["notes"]:
        scores = per_token[seg["notes"]]
        for j in range(int(data.n_notes[0])):
            token = row["note_tokens"][j]
            concept, _, value = token.partition("=")
            notes.append(
                {
                    "token": token,
                    "concept": concept,
                    "value": value or None,
                    "flags": _flag_names(int(row["note_flags"][j])),
                    "note_id": row["note_ids"][j],
                    "start": int(row["note_starts"][j]),
                    "end": int(row["note_ends"][j]),
                    "attribution": float(scores[j]),
                }
            )
        notes.sort(key=lambda x: -abs(x["attribution"]))

    totals = {
        "genomics": float(sum(v["attribution"] for v in variants)),
        "radiomics": float(sum(g["attribution"] for g in groups)),
        "notes": float(sum(n["attribution"] for n in notes)),
    }
    return {
        "patient_key": row.get("patient_key"),
        "response_probability": float(1 / (1 + np.exp(-logit))),
        "logit": logit,
        "baseline_logit": base_logit,
        "convergence_delta": float(delta.abs().max()),
        "method": METHOD,
        "modalities_present": [m for m in MODALITIES if present[m]],
        "modality_attribution": totals,
        "variants": variants,
        "radiomic_groups": groups,
        "notes": notes,
    }


def _bar(value: float, scale: float) -> str:
    width = 0 if scale <= 0 else min(100.0, 100.0 * abs(value) / scale)
    cls = "pos" if value >= 0 else "neg"
    return f'<span class="bar {cls}" style="width:{width:.1f}px"></span>'


def render_html(expl: Mapping[str, Any], *, top_groups: int = 10) -> str:
    """Return a self-contained HTML report of one explanation (every string escaped)."""
    e = html.escape
    key = e(str(expl.get("patient_key") or "patient"))
    scale = max(
        [abs(v["attribution"]) for v in expl["variants"]]
        + [abs(g["attribution"]) for g in expl["radiomic_groups"]]
        + [abs(n["attribution"]) for n in expl["notes"]]
        + [1e-9]
    )
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Response explanation {key}</title><style>",
        "body{font:14px system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}"
        ".bar{display:inline-block;height:10px}.pos{background:#c0392b}.neg{background:#2471a3}"
        ".num{text-align:right;font-variant-numeric:tabular-nums}small{color:#666}",
        "</style></head><body>",
        f"<h1>Response explanation: {key}</h1>",
        f"<p>Predicted response probability <strong>{expl['response_probability']:.3f}</strong>; "
        f"modalities present: {e(', '.join(expl['modalities_present']) or 'none')}.</p>",
        f"<p><small>{e(expl['method'])}. Attributions in logit units; red pushes towards "
        f"response, blue away. Convergence delta {expl['convergence_delta']:.3g}.</small></p>",
        "<h2>By modality</h2><table>",
    ]
    for m, v in expl["modality_attribution"].items():
        parts.append(
            f"<tr><td>{e(m)}</td><td class='num'>{v:+.3f}</td><td>{_bar(v, scale)}</td></tr>"
        )
    parts.append(
        "</table><h2>Variants</h2><table><tr><th>gene</th><th>alteration</th>"
        "<th>VAF</th><th>attribution</th><th></th></tr>"
    )
    for v in expl["variants"]:
        parts.append(
            f"<tr><td>{e(v['gene'])}</td><td>{e(v['alteration'])}</td>"
            f"<td class='num'>{v['vaf']:.2f}</td><td class='num'>"
            f"{v['attribution']:+.3f}</td><td>{_bar(v['attribution'], scale)}</td></tr>"
        )
    parts.append(
        "</table><h2>Radiomic feature groups</h2><table><tr><th>group</th>"
        "<th>attribution</th><th></th><th>top features (z, contribution)</th></tr>"
    )
    for g in expl["radiomic_groups"][:top_groups]:
        feats = "<br>".join(
            f"{e(f['feature'])} <small>({f['value_z']:+.2f}, {f['contribution']:+.3f})</small>"
            for f in g["top_features"]
        )
        parts.append(
            f"<tr><td>{e(g['group'])}</td><td class='num'>{g['attribution']:+.3f}</td>"
            f"<td>{_bar(g['attribution'], scale)}</td><td>{feats}</td></tr>"
        )
    parts.append(
        "</table><h2>Note concepts</h2><table><tr><th>concept</th><th>context</th>"
        "<th>note</th><th>span</th><th>attribution</th><th></th></tr>"
    )
    for n in expl["notes"]:
        parts.append(
            f"<tr><td>{e(n['token'])}</td><td>{e(', '.join(n['flags']))}</td>"
            f"<td>{e(n['note_id'])}</td><td>{n['start']}-{n['end']}</td>"
            f"<td class='num'>{n['attribution']:+.3f}</td>"
            f"<td>{_bar(n['attribution'], scale)}</td></tr>"
        )
    parts.append("</table></body></html>\n")
    return "".join(parts)


def _file_stem(patient_key: Any, i: int) -> str:
    stem = _SAFE_NAME.sub("_", str(patient_key or ""))
    return stem if stem.strip("_.") else f"patient-{i}"


def write_explanation(expl: Mapping[str, Any], out_dir: Path | str, i: int = 0) -> Path:
    """Write ``<key>.json`` and ``<key>.html`` into ``out_dir``; return the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _file_stem(expl.get("patient_key"), i)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(expl, indent=1) + "\n", encoding="utf-8")
    (out / f"{stem}.html").write_text(render_html(expl), encoding="utf-8")
    return path


def explain(
    model_dir: Path | str,
    dataset_dir: Path | str,
    out_dir: Path | str,
    *,
    patient_keys: Sequence[str] | None = None,
    split: str | None = "test",
    limit: int | None = 20,
    steps: int = 32,
) -> list[Path]:
    """Explain patients of a dataset with a trained model folder.

    Without ``patient_keys``, the first ``limit`` patients of ``split`` are explained.
    Files go to ``<out_dir>/explanations/``.

    Returns: the JSON paths written.

    Raises:
        KeyError: a requested patient key is not in the dataset.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from oncopipe.cohort.dataset import read_dataset
    from training.inference import model_fn

    loaded = model_fn(model_dir)
    table = read_dataset(dataset_dir).table
    if patient_keys:
        table = table.filter(pc.is_in(table["patient_key"], value_set=pa.array(patient_keys)))
        found = set(table["patient_key"].to_pylist())
        missing = [k for k in patient_keys if k not in found]
        if missing:
            raise KeyError(f"{len(missing)} patient keys not in the dataset, e.g. {missing[0]}")
    elif split:
        table = table.filter(pc.equal(table["split"], split))
    rows = table.to_pylist()[: limit if limit and not patient_keys else None]
    target = Path(out_dir) / "explanations"
    return [
        write_explanation(explain_patient(loaded, r, steps=steps), target, i)
        for i, r in enumerate(rows)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m training.explain --model-dir D --dataset D --out D [--patient pk-..]``."""
    p = argparse.ArgumentParser(prog="python -m training.explain")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--patient", action="append", dest="patients")
    p.add_argument("--limit", type=int, default=20)
    args = p.parse_args(argv)
    paths = explain(
        args.model_dir, args.dataset, args.out, patient_keys=args.patients, limit=args.limit
    )
    print(f"{len(paths)} explanations in {args.out / 'explanations'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
