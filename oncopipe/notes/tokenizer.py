"""A subword tokenizer for scrubbed note text, with the ``tokenizers`` library.

BERT-style input: lower-casing normaliser (accents stripped), ``BertPreTokenizer``, the special
tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` and ``[CLS] ... [SEP]`` around every encoding. The model
is BPE, not WordPiece: ``WordPieceTrainer`` in tokenizers 0.23 is not deterministic (its ``##``
tokens get ids in hash-map order, which also changes tie-breaking between merges;
huggingface/tokenizers#1794), while BPE without a continuing-subword prefix gives the same
vocabulary and ids for the same texts in every run. Encoding is what matters here; no decoder is
set.

Train it only on scrubbed text (``NoteResult.text``): the vocabulary is saved with the model and
would otherwise carry names and identifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB, MAX_VOCAB = 100, 64_000


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4000) -> Tokenizer:
    """Train a BPE tokenizer on scrubbed texts; return it.

    Raises:
        ValueError: ``vocab_size`` outside 100..64000.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ValueError(
            f"vocab_size must be between {MIN_VOCAB} and {MAX_VOCAB}, got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))  # noqa: S106 - a token, not a password
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    log.info("trained a BPE tokenizer: %d tokens", tokenizer.get_vocab_size())
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> Path:
    """Write ``tokenizer.json`` under ``directory`` (created); return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    tokenizer.save(str(path))
    return path


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a tokenizer from ``tokenizer.json`` or the folder holding it.

    Raises:
        FileNotFoundError: no tokenizer file there.
    """
    from tokenizers import Tokenizer

    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no {TOKENIZER_FILE} at {path}")
    return Tokenizer.from_file(str(file))


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """Return the tokenizer serialised as the JSON text of ``tokenizer.json``."""
    return tokenizer.to_str()


def load_tokenizer_json(text: str) -> Tokenizer:
    """Return the tokenizer from the JSON text of ``tokenizer.json`` (e.g. read from a bucket).

    Raises:
        ValueError: the text is not a tokenizer serialisation.
    """
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # the Rust binding raises a bare Exception
        raise ValueError("not a tokenizer.json document") from e


def encode(tokenizer: Tokenizer, text: str, max_length: int = 512) -> list[int]:
    """Return the ids of ``[CLS] text [SEP]``, the text truncated to fit ``max_length``.

    Raises:
        ValueError: ``max_length`` below 2 (no room for [CLS] and [SEP]), or a tokenizer
            without those tokens.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    # encode without the template, cut, then wrap: truncation is explicit and the shared
    # tokenizer object is never reconfigured (enable_truncation would change it for all callers)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    if cls is None or sep is None:
        raise ValueError("tokenizer has no [CLS]/[SEP] token: not one made by train_tokenizer")
    ids = tokenizer.encode(text, add_special_tokens=False).ids[: max_length - 2]
    return [cls, *ids, sep]
