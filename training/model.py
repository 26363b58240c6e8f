"""The multimodal transformer: genomics, radiomics and note concepts in one sequence.

Each modality is tokenised into the same ``d_model`` space and the tokens are encoded
together, so attention runs across modalities::

    [CLS] [GEN] [RAD] [NOTE]  variant tokens ...  radiomic group tokens ...  note tokens ...

* ``[GEN]``/``[RAD]``/``[NOTE]`` mark that a modality is present (a sequenced tumour with
  no somatic call still says "genomics present"); an absent modality's tokens are masked
  out of attention (key padding), so missing data is never imputed.
* variant token = gene embedding + alteration embedding + a projection of the VAF.
* radiomic token = a linear map of one group's normalised values (image type x feature
  class, e.g. ``wavelet-LLH_glcm``) + the group's embedding. All groups' maps run as one
  batched matrix product (a block-diagonal linear layer), not 85 small layers.
* note token = concept-token embedding + a projection of the context flags (negated,
  uncertain, historical, hypothetical, family, has-number) + a projection of the number.
* every token adds its modality's type embedding.

The encoder is pre-norm with its own attention so that pruning can remove heads and
feed-forward units physically (:mod:`training.prune`): each layer's head count and
feed-forward width are in the config (``layer_heads``, ``layer_ff``). The classifier reads
``[CLS]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.data import MODALITIES, N_FLAGS

N_SPECIAL = 4  # [CLS] and one marker per modality


@dataclass
class ModelConfig:
    """Architecture and the vocabulary sizes it was built for (saved as ``config.json``)."""

    n_genes: int
    n_alterations: int
    n_note_tokens: int
    radiomic_groups: list[str]
    group_size: int
    d_model: int = 32
    layers: int = 3
    heads: int = 2
    ff: int = 64
    dropout: float = 0.0
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    max_variants: int = 32
    max_notes: int = 48
    #: training-only regularisers of the radiomic tokens: Gaussian noise added to the
    #: normalised values, and the share of groups hidden from attention per patient
    radiomic_noise: float = 0.0
    radiomic_group_dropout: float = 0.0
    #: heads and feed-forward units per layer after pruning (None: ``heads``/``ff``)
    layer_heads: list[int] | None = None
    layer_ff: list[int] | None = None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    def heads_of(self, layer: int) -> int:
        return self.layer_heads[layer] if self.layer_heads is not None else self.heads

    def ff_of(self, layer: int) -> int:
        return self.layer_ff[layer] if self.layer_ff is not None else self.ff

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        """Build from a saved dict; unknown keys are ignored.

        Raises:
            ValueError: a required key is missing.
        """
        known = set(cls.__dataclass_fields__)
        required = {"n_genes", "n_alterations", "n_note_tokens", "radiomic_groups", "group_size"}
        missing = required - set(raw)
        if missing:
            raise ValueError(f"model config lacks {sorted(missing)}")
        return cls(**{k: v for k, v in raw.items() if k in known})


class EncoderLayer(nn.Module):
    """Pre-norm transformer layer whose heads and feed-forward units can be pruned.

    ``heads == 0`` or ``ff == 0`` removes that block. ``head_gate``/``ff_gate`` (set by the
    pruning code) multiply each head's output / each unit's activation, so their gradients
    measure importance.
    """

    def __init__(self, d_model: int, heads: int, head_dim: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.ff = heads, head_dim, ff
        self.head_gate: Tensor | None = None
        self.ff_gate: Tensor | None = None
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * heads * head_dim) if heads else None
        self.out = nn.Linear(heads * head_dim, d_model) if heads else None
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, ff) if ff else None
        self.ff2 = nn.Linear(ff, d_model) if ff else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_bias: Tensor) -> Tensor:
        """``x`` (B, L, d); ``attn_bias`` (B, 1, L): 0 where a key may be read, else -1e9."""
        if self.qkv is not None and self.out is not None:
            b, n, _ = x.shape
            qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).reshape(3, b * self.heads, n, self.head_dim)
            # explicit attention: for these short sequences it is ~3x faster on CPU than
            # scaled_dot_product_attention's flash kernel (forward + backward)
            scores = torch.baddbmm(
                attn_bias.repeat_interleave(self.heads, dim=0).expand(-1, n, -1),
                q,
                k.transpose(1, 2),
                alpha=self.head_dim**-0.5,
            )
            a = torch.bmm(torch.softmax(scores, dim=-1), v).view(b, self.heads, n, self.head_dim)
            if self.head_gate is not None:
                a = a * self.head_gate.view(1, -1, 1, 1)
            a = a.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
            x = x + self.drop(self.out(a))
        if self.ff1 is not None and self.ff2 is not None:
            h = F.gelu(self.ff1(self.norm2(x)))
            if self.ff_gate is not None:
                h = h * self.ff_gate
            x = x + self.drop(self.ff2(h))
        return x


@dataclass
class Embedded:
    """The token sequence of a batch, before the encoder.

    ``tokens`` (B, L, d) = ``base`` (structure: type, group, marker and [CLS] embeddings) +
    content (``base`` only when asked for); ``mask`` (B, L) True for real tokens;
    ``segments`` names the slice of each part of the sequence (``variants``, ...).
    """

    tokens: Tensor
    base: Tensor | None
    mask: Tensor
    segments: dict[str, slice]


class MultimodalTransformer(nn.Module):
    """Response classifier over genomics, radiomics and note-concept tokens."""

    modality_on: Tensor  # bool (3,): the modalities this model was built for

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.special = nn.Parameter(torch.randn(N_SPECIAL, d) * 0.02)
        self.type_emb = nn.Embedding(len(MODALITIES) + 1, d)
        self.gene_emb = nn.Embedding(config.n_genes, d, padding_idx=0)
        self.alt_emb = nn.Embedding(config.n_alterations, d, padding_idx=0)
        # VAF and note numbers: a bias-free linear map of one number, i.e. a vector
        self.vaf_weight = nn.Parameter(torch.randn(d) * 0.5)
        groups = len(config.radiomic_groups)
        # one linear map per radiomic group, stored as one (groups, size, d) weight
        self.rad_weight = nn.Parameter(
            torch.randn(groups, config.group_size, d) / config.group_size**0.5
        )
        self.rad_group_emb = nn.Parameter(torch.randn(groups, d) * 0.02)
        self.note_emb = nn.Embedding(config.n_note_tokens, d, padding_idx=0)
        self.flag_proj = nn.Linear(N_FLAGS, d, bias=False)
        self.num_weight = nn.Parameter(torch.randn(d) * 0.5)
        self.embed_norm = nn.LayerNorm(d)
        on = torch.tensor([m in config.modalities for m in MODALITIES])
        self.register_buffer("modality_on", on, persistent=False)
        self.embed_drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d, config.heads_of(i), config.head_dim, config.ff_of(i), config.dropout)
            for i in range(config.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)

    # -- embedding -------------------------------------------------------------------------

    def embed(self, batch: dict[str, Tensor], *, with_base: bool = False) -> Embedded:
        """Return the token sequence of a batch (:meth:`training.data.Encoded.batch`).

        ``with_base`` also returns the content-free baseline (for explanations); serving
        skips it. The code favours few tensor operations: one patient's forward pass is
        dominated by per-operation overhead, not arithmetic.
        """
        cfg = self.config
        present = batch["present"] & self.modality_on
        b = present.shape[0]
        types = self.type_emb.weight
        special = (self.special + types).expand(b, -1, -1)  # [CLS] type 0, markers 1-3
        tokens: list[Tensor] = [special]
        bases: list[Tensor] = [special]
        masks: list[Tensor] = [torch.cat([present.new_ones(b, 1), present], dim=1)]
        segments: dict[str, slice] = {"special": slice(0, N_SPECIAL)}
        pos = N_SPECIAL
        if "genomics" in cfg.modalities:
            gene = batch["gene"]
            content = (
                self.gene_emb(gene)
                + self.alt_emb(batch["alteration"])
                + batch["vaf"].unsqueeze(-1) * self.vaf_weight
            )
            tokens.append(content + types[1])
            bases.append(types[1].expand_as(content))
            masks.append((gene > 0) & present[:, :1])
            segments["variants"] = slice(pos, pos + gene.shape[1])
            pos += gene.shape[1]
        if "radiomics" in cfg.modalities:
            values = batch["radiomics"]
            if self.training and cfg.radiomic_noise > 0:
                # 1,316 features and ~1,000 patients: without noise the tokeniser memorises
                values = values + cfg.radiomic_noise * torch.randn_like(values)
            groups = values.shape[1]
            # each group's linear map, all at once: (G, B, S) @ (G, S, d) -> (B, G, d)
            content = torch.bmm(values.transpose(0, 1), self.rad_weight).transpose(0, 1)
            base = self.rad_group_emb + types[2]
            tokens.append(content + base)
            bases.append(base.expand(b, -1, -1))
            mask = present[:, 1:2].expand(b, groups)
            if self.training and cfg.radiomic_group_dropout > 0:
                mask = mask & (torch.rand(mask.shape) >= cfg.radiomic_group_dropout)
            masks.append(mask)
            segments["radiomics"] = slice(pos, pos + groups)
            pos += groups
        if "notes" in cfg.modalities:
            tok = batch["note_token"]
            content = (
                self.note_emb(tok)
                + self.flag_proj(batch["note_flags"])
                + batch["note_numeric"].unsqueeze(-1) * self.num_weight
            )
            tokens.append(content + types[3])
            bases.append(types[3].expand_as(content))
            masks.append((tok > 0) & present[:, 2:3])
            segments["notes"] = slice(pos, pos + tok.shape[1])
            pos += tok.shape[1]
        return Embedded(
            tokens=torch.cat(tokens, dim=1),
            base=torch.cat(bases, dim=1) if with_base else None,
            mask=torch.cat(masks, dim=1),
            segments=segments,
        )

    # -- encoder ---------------------------------------------------------------------------

    def encode(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """Return the logit (B,) of an embedded sequence and its mask."""
        x = self.embed_drop(self.embed_norm(tokens))
        attn_bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, -1e9).unsqueeze(1)
        for layer in self.layers:
            x = layer(x, attn_bias)
        return self.head(self.norm(x[:, 0])).squeeze(-1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Return response logits (B,) of a batch."""
        e = self.embed(batch)
        return self.encode(e.tokens, e.mask)

    def encoder_layers(self) -> list[EncoderLayer]:
        """Return the encoder layers, typed."""
        return [layer for layer in self.layers if isinstance(layer, EncoderLayer)]

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def set_determinism(seed: int, *, threads: int | None = None) -> None:
    """Seed torch, numpy and random; use deterministic kernels; optionally fix threads."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)  # legacy global state that some libraries read
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)


def save_model(model: MultimodalTransformer, model_dir: Path | str, **extra: Any) -> Path:
    """Write ``model.pt`` (config + state dict + ``extra``) and ``config.json``; return model.pt.

    The file is written to a temporary name and renamed, so a reader never sees half a model.
    """
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict(), **extra}, tmp)
    tmp.replace(path)
    (out / "config.json").write_text(model.config.to_json() + "\n", encoding="utf-8")
    return path


def quantize(model: MultimodalTransformer) -> nn.Module:
    """Return the model with dynamic int8 ``Linear`` layers (weights int8, CPU only)."""
    import warnings

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not installed
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def load_model(model_dir: Path | str) -> MultimodalTransformer:
    """Load ``model.pt`` from a model folder, in eval mode.

    Raises:
        FileNotFoundError: no model.pt.
        ValueError: the file is not a model of this code.
    """
    path = Path(model_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no model.pt in the model folder")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or "config" not in saved or "state_dict" not in saved:
        raise ValueError(f"{path}: not a model saved by training.model.save_model")
    model = MultimodalTransformer(ModelConfig.from_dict(saved["config"]))
    if saved.get("quantized"):
        model = quantize(model)  # type: ignore[assignment]
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return model
