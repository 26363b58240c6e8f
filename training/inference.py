"""Serving: the SageMaker PyTorch inference contract, and the same path locally.

The SageMaker PyTorch serving container calls, per model and request::

    model = model_fn(model_dir)                       # once
    data = input_fn(request_body, content_type)       # per request
    prediction = predict_fn(data, model)
    body = output_fn(prediction, accept)

``model_dir`` is what training wrote (``model.pt``, ``config.json``, ``preprocess.json``).
A request is ``application/json``: one patient or a list of patients, each with raw
features, preprocessed here with the training split's ``preprocess.json``::

    {"patient_key": "pk-...",
     "variants": [{"gene": "KRAS", "protein_change": "G12C", "vaf": 0.31, "filter": "PASS"}],
     "radiomics": {"original_firstorder_Entropy": 4.2, ...},
     "notes": [{"concept": "ecog", "value": "1", "numeric_value": 1, "negated": false,
                "certainty": "certain", "temporality": "current", "experiencer": "patient",
                "note_id": "note-1", "start": 10, "end": 16}]}

A missing or null ``variants``/``radiomics``/``notes`` is a missing modality; ``filter``
defaults to ``PASS`` and non-PASS calls are ignored; radiomic features the model does not
know are ignored and known ones that are absent take the training mean. The response is
``{"patient_key", "response_probability", "modalities_present"}`` (a list for a list).

Bad requests raise :class:`RequestError` (a ``ValueError``; the toolkit answers 4xx-style)
with a message that names the patient's position and the field, never a value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from oncopipe.cohort.preprocess import Preprocessing

JSON = "application/json"
MAX_PATIENTS = 1000
MODALITY_FIELDS = ("variants", "radiomics", "notes")
NOTE_DEFAULTS: dict[str, Any] = {
    "value": None,
    "numeric_value": None,
    "negated": False,
    "certainty": "certain",
    "temporality": "current",
    "experiencer": "patient",
    "note_id": "",
    "start": 0,
    "end": 0,
}


class RequestError(ValueError):
    """A request the handler cannot serve; the message says what to fix."""


@dataclass
class LoadedModel:
    """A model ready to serve: the network, its preprocessing and radiomic layout."""

    model: Any
    preprocessing: Preprocessing
    layout: Any
    model_dir: Path

    @property
    def modalities(self) -> list[str]:
        return list(self.model.config.modalities)


def model_fn(model_dir: str | Path) -> LoadedModel:
    """Load the model folder (SageMaker calls this once per worker).

    Raises:
        FileNotFoundError: no ``model.pt`` or ``preprocess.json``.
        ValueError: the files are not a model of this code.
    """
    import torch

    from training.data import RadiomicLayout
    from training.model import load_model

    root = Path(model_dir)
    # the model package holds both: the endpoint serves the pruned model, batch transform
    # the full one (ONCOPIPE_MODEL_VARIANT, set on the SageMaker model)
    if os.environ.get("ONCOPIPE_MODEL_VARIANT") == "pruned" and (root / "pruned").is_dir():
        root = root / "pruned"
    if not (root / "preprocess.json").exists():
        raise FileNotFoundError(f"{root / 'preprocess.json'}: the model folder lacks it")
    # one thread per request: the container scales with workers, not intra-op threads
    torch.set_num_threads(1)
    prep = Preprocessing.load(root / "preprocess.json")
    model = load_model(root)
    return LoadedModel(model, prep, RadiomicLayout.from_features(prep.radiomic_features), root)


def _patient(raw: Any, i: int) -> dict[str, Any]:
    where = f"patient {i}"
    if not isinstance(raw, Mapping):
        raise RequestError(f"{where}: a patient is a JSON object")
    key = raw.get("patient_key")
    if key is not None and not isinstance(key, str):
        raise RequestError(f"{where}: patient_key must be a string")
    out: dict[str, Any] = {"patient_key": key}
    variants = raw.get("variants")
    if variants is not None:
        if not isinstance(variants, list):
            raise RequestError(f"{where}: variants must be a list of objects")
        calls = []
        for j, v in enumerate(variants):
            if not isinstance(v, Mapping) or not isinstance(v.get("gene"), str):
                raise RequestError(f"{where}: variants[{j}] needs a string 'gene'")
            change = v.get("protein_change")
            if change is not None and not isinstance(change, str):
                raise RequestError(f"{where}: variants[{j}].protein_change must be a string")
            vaf = v.get("vaf", 0.0)
            if vaf is not None and (isinstance(vaf, bool) or not isinstance(vaf, int | float)):
                raise RequestError(f"{where}: variants[{j}].vaf must be a number")
            calls.append(
                {
                    "gene": v["gene"],
                    "protein_change": change,
                    "vaf": vaf,
                    "filter": v.get("filter", "PASS"),
                }
            )
        out["variants"] = calls
    radiomics = raw.get("radiomics")
    if radiomics is not None:
        if not isinstance(radiomics, Mapping):
            raise RequestError(f"{where}: radiomics must be an object of feature: number")
        for name, value in radiomics.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise RequestError(f"{where}: radiomics[{name!r}] must be a number")
        out["radiomics"] = dict(radiomics)
    notes = raw.get("notes")
    if notes is not None:
        if not isinstance(notes, list):
            raise RequestError(f"{where}: notes must be a list of concept objects")
        mentions = []
        for j, m in enumerate(notes):
            if not isinstance(m, Mapping) or not isinstance(m.get("concept"), str):
                raise RequestError(f"{where}: notes[{j}] needs a string 'concept'")
            mentions.append({**NOTE_DEFAULTS, **{k: m[k] for k in m if m[k] is not None}})
        out["notes"] = mentions
    return out


def input_fn(request_body: str | bytes, content_type: str = JSON) -> dict[str, Any]:
    """Parse a request into validated patients: ``{"patients": [...], "single": bool}``.

    Raises:
        RequestError: not ``application/json``, not JSON, not a patient or list of patients,
            more than 1,000 patients, or a field of the wrong type.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if media != JSON:
        raise RequestError(f"unsupported content type {content_type!r}; send {JSON}")
    try:
        text = request_body.decode("utf-8") if isinstance(request_body, bytes) else request_body
        payload = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the request body is not JSON ({type(e).__name__})") from e
    single = isinstance(payload, Mapping)
    patients = [payload] if single else payload
    if not isinstance(patients, list) or not patients:
        raise RequestError("send one patient object or a non-empty list of patient objects")
    if len(patients) > MAX_PATIENTS:
        raise RequestError(f"{len(patients)} patients in one request; at most {MAX_PATIENTS}")
    return {"patients": [_patient(p, i) for i, p in enumerate(patients)], "single": single}


def predict_fn(data: Mapping[str, Any], model: LoadedModel) -> dict[str, Any]:
    """Preprocess the parsed patients and predict; return ``{"results": [...], "single"}``.

    Raises:
        RequestError: a patient's radiomics share no feature with the model's.
    """
    from training.data import MODALITIES, encode_rows
    from training.fit import predict

    prep = model.preprocessing
    known = set(prep.radiomic_features)
    rows = []
    for i, p in enumerate(data["patients"]):
        radiomics = p.get("radiomics")
        if radiomics is not None and not known.intersection(radiomics):
            raise RequestError(
                f"patient {i}: none of the radiomic features is one of the model's "
                f"{len(known)} (names like {prep.radiomic_features[0]!r})"
            )
        row = prep.encode_patient(p.get("variants"), radiomics, p.get("notes"))
        row["patient_key"] = p.get("patient_key")
        rows.append(row)
    encoded = encode_rows(
        rows,
        prep,
        max_variants=model.model.config.max_variants,
        max_notes=model.model.config.max_notes,
        layout=model.layout,
    )
    probs = predict(model.model, encoded)
    results = []
    for row, prob in zip(rows, probs, strict=True):
        present = [
            m
            for m, flag in zip(
                MODALITIES,
                (row["has_genomics"], row["has_radiomics"], row["has_notes"]),
                strict=True,
            )
            if flag
        ]
        results.append(
            {
                "patient_key": row["patient_key"],
                "response_probability": round(float(prob), 6),
                "modalities_present": present,
            }
        )
    return {"results": results, "single": bool(data.get("single"))}


def output_fn(prediction: Mapping[str, Any], accept: str = JSON) -> str:
    """Serialise a prediction as JSON (an object for one patient, else a list).

    Raises:
        RequestError: ``accept`` asks for something other than JSON.
    """
    media = (accept or JSON).split(";")[0].strip().lower()
    if media not in (JSON, "*/*"):
        raise RequestError(f"unsupported accept type {accept!r}; accept {JSON}")
    results = prediction["results"]
    return json.dumps(results[0] if prediction.get("single") else results)


def predict_local(model_dir: str | Path, payload: Any) -> Any:
    """Run the serving path in-process (``oncopipe predict``); return the parsed response.

    ``payload`` is a patient dict, a list of them, or the JSON text/bytes of either.

    Raises:
        RequestError: a bad payload (as the endpoint would answer).
        FileNotFoundError: the model folder is incomplete.
    """
    body = payload if isinstance(payload, str | bytes) else json.dumps(payload)
    model = model_fn(model_dir)
    return json.loads(output_fn(predict_fn(input_fn(body, JSON), model), JSON))
