"""The training loop of the multimodal model, without the job around it.

:func:`fit` trains a :class:`training.model.MultimodalTransformer` on encoded rows, with the
checkpoints of Managed Spot Training (model, optimiser, scheduler, RNG state, epoch, best
metric and weights after every epoch, written to a temporary file and renamed; a run that
finds one resumes after its epoch, with the same weights as an uninterrupted run). The
script-mode job (arguments, channels, MLflow, packaging) is :mod:`training.train`; the
pruning (:mod:`training.prune`) and the evaluation (:mod:`training.evaluate`) reuse the loop.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import MODALITIES, Encoded, RadiomicLayout, modality_dropout, select_modalities

log = logging.getLogger(__name__)

DEFAULT_SPOT_CHECKPOINTS = Path("/opt/ml/checkpoints")
CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class HyperParameters:
    """Training settings (the job's hyperparameters)."""

    epochs: int = 16
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.01
    d_model: int = 32
    # three layers: as accurate as two on the development cohort, and the depth that
    # structured pruning then removes (training/prune.py)
    layers: int = 3
    heads: int = 2
    ff: int = 64
    # residual dropout costs ~20 % of a CPU step; the radiomic noise below regularises
    # better (chosen on a development cohort's validation split)
    dropout: float = 0.0
    modality_dropout: float = 0.15
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    seed: int = 0
    threads: int | None = None
    max_variants: int = 32
    max_notes: int = 48
    warmup: float = 0.05
    radiomic_noise: float = 1.0
    radiomic_group_dropout: float = 0.3

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(
                f"modalities must be a non-empty subset of {','.join(MODALITIES)}, "
                f"got {','.join(self.modalities)}"
            )
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")


@dataclass
class TrainResult:
    """What a training run produced."""

    model: Any  # MultimodalTransformer with the chosen epoch's weights
    history: list[dict[str, float]]
    best_epoch: int
    best_val_auc: float | None
    samples_per_second: float
    train_seconds: float
    resumed_from_epoch: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def roc_auc(labels: Any, scores: Any) -> float:
    """Return the area under the ROC curve (Mann-Whitney, ties count half); NaN if one class."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks of tied scores
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def build_model(prep: Any, hp: HyperParameters) -> Any:
    """Return a freshly initialised model for a preprocessing and hyperparameters."""
    from training.model import ModelConfig, MultimodalTransformer

    layout = RadiomicLayout.from_features(prep.radiomic_features)
    config = ModelConfig(
        n_genes=len(prep.genes),
        n_alterations=len(prep.alterations),
        n_note_tokens=len(prep.note_tokens),
        radiomic_groups=layout.groups,
        group_size=layout.group_size,
        d_model=hp.d_model,
        layers=hp.layers,
        heads=hp.heads,
        ff=hp.ff,
        dropout=hp.dropout,
        modalities=list(hp.modalities),
        max_variants=hp.max_variants,
        max_notes=hp.max_notes,
        radiomic_noise=hp.radiomic_noise,
        radiomic_group_dropout=hp.radiomic_group_dropout,
    )
    return MultimodalTransformer(config)


def predict(model: Any, data: Encoded, *, present: Any | None = None, batch_size: int = 256) -> Any:
    """Return response probabilities (N,) for encoded patients (eval mode, no gradients)."""
    import torch

    was_training = model.training
    if was_training:  # switching modes walks every module: skip it when serving
        model.eval()
    out = []
    flags = data.present if present is None else present
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = np.arange(start, min(start + batch_size, len(data)))
            out.append(torch.sigmoid(model(data.batch(idx, flags[idx]))).numpy())
    if was_training:
        model.train()
    return np.concatenate(out) if out else np.zeros(0)


def _schedule(total_steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    with open(tmp, "rb") as f:  # on disk before the rename makes it the checkpoint
        os.fsync(f.fileno())
    tmp.replace(path)


def fit(
    train_data: Encoded,
    val_data: Encoded | None,
    prep: Any,
    hp: HyperParameters,
    *,
    checkpoint_dir: Path | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    state_extra: dict[str, Any] | None = None,
    model: Any | None = None,
    teacher: Any | None = None,
    distill_weight: float = 0.5,
) -> TrainResult:
    """Train on encoded patients; return the model of the epoch with the best validation AUC.

    ``model`` continues training an existing model (fine-tuning after pruning) instead of
    a fresh one built from ``hp``. With ``teacher`` (knowledge distillation) the loss mixes
    the labels with the teacher's probabilities on the same inputs, ``distill_weight`` on
    the teacher.

    With ``checkpoint_dir``, resume from its checkpoint when there is one and write one
    after every epoch. ``state_extra`` is stored in (and, on resume, updated from) the
    checkpoint (e.g. the MLflow run id).

    Raises:
        ValueError: the checkpoint was written with other hyperparameters, or no patient
            in ``train_data`` has a label.
    """
    import torch

    from training.model import set_determinism

    set_determinism(hp.seed, threads=hp.threads)
    labelled = np.flatnonzero(~np.isnan(train_data.labels))
    if not len(labelled):
        raise ValueError("no labelled training patient")
    model = model if model is not None else build_model(prep, hp)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "emb" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "emb" not in n)]
    optimiser = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=hp.lr,
    )
    steps_per_epoch = math.ceil(len(labelled) / hp.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, _schedule(steps_per_epoch * hp.epochs, hp.warmup)
    )
    history: list[dict[str, float]] = []
    best_auc = -1.0
    best_epoch = 0
    best_state: dict[str, Any] | None = None
    start_epoch = 0
    ckpt_path = checkpoint_dir / CHECKPOINT_FILE if checkpoint_dir else None
    if ckpt_path is not None and ckpt_path.exists():
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if saved.get("hparams") != asdict(hp):
            raise ValueError(
                f"{ckpt_path}: checkpoint of a run with other hyperparameters; remove it or "
                "use another --checkpoint-dir"
            )
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        start_epoch = int(saved["epoch"])
        history = list(saved["history"])
        best_auc = float(saved["best_metric"])
        best_epoch = int(saved["best_epoch"])
        best_state = saved["best_state"]
        if state_extra is not None:
            state_extra.update(saved.get("extra", {}))
        log.info("resumed from %s after epoch %d", ckpt_path, start_epoch)

    present_train = select_modalities(train_data.present, hp.modalities)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    train_seconds = 0.0
    samples = 0
    if teacher is not None:
        teacher.eval()
    for epoch in range(start_epoch, hp.epochs):
        # every epoch's randomness derives from (seed, epoch): resume gives identical runs
        torch.manual_seed(hp.seed * 1_000_003 + epoch)
        rng = np.random.default_rng([hp.seed, epoch])
        model.train()
        order = rng.permutation(labelled)
        t0 = time.perf_counter()
        total_loss = 0.0
        for start in range(0, len(order), hp.batch_size):
            idx = order[start : start + hp.batch_size]
            flags = modality_dropout(present_train[idx], hp.modality_dropout, rng)
            batch = train_data.batch(idx, flags)
            target = torch.from_numpy(train_data.labels[idx])
            logits = model(batch)
            loss = loss_fn(logits, target)
            if teacher is not None:
                with torch.no_grad():
                    soft = torch.sigmoid(teacher(batch))
                loss = (1 - distill_weight) * loss + distill_weight * loss_fn(logits, soft)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            scheduler.step()
            total_loss += float(loss.detach()) * len(idx)
        train_seconds += time.perf_counter() - t0
        samples += len(order)
        metrics = {"epoch": float(epoch + 1), "loss": total_loss / len(order)}
        if val_data is not None and len(val_data):
            present_val = select_modalities(val_data.present, hp.modalities)
            p = predict(model, val_data, present=present_val)
            y = val_data.labels
            ok = ~np.isnan(y)
            metrics["val_auc"] = roc_auc(y[ok], p[ok])
            eps = 1e-7
            metrics["val_loss"] = float(
                -np.mean(y[ok] * np.log(p[ok] + eps) + (1 - y[ok]) * np.log(1 - p[ok] + eps))
            )
        history.append(metrics)
        score = metrics.get("val_auc", float(epoch))
        if not math.isnan(score) and score > best_auc:
            best_auc, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ckpt_path is not None:
            _atomic_save(
                {
                    "epoch": epoch + 1,
                    "model": model.state_dict(),
                    "optimizer": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "history": history,
                    "best_metric": best_auc,
                    "best_epoch": best_epoch,
                    "best_state": best_state,
                    "hparams": asdict(hp),
                    "extra": dict(state_extra or {}),
                },
                ckpt_path,
            )
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
        # one "key=value" line per epoch: SageMaker's metric definitions (and the tuner's
        # objective, validation:auc) read val_auc=... and train_loss=... from the log
        log.info("epoch=%d %s", epoch + 1,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))  # fmt: skip
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    has_val = val_data is not None and len(val_data) > 0
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch or hp.epochs,
        best_val_auc=best_auc if has_val and best_auc >= 0 else None,
        samples_per_second=samples / train_seconds if train_seconds > 0 else float("nan"),
        train_seconds=train_seconds,
        resumed_from_epoch=start_epoch,
    )
