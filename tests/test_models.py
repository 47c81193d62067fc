"""The model zoo, init specs and the offline tokenizer."""

from __future__ import annotations

import pytest
import torch

from fedsim.core.errors import UsageError
from fedsim.core.models import build_model, model_config, parse_init
from fedsim.core.text import decode, load_tokenizer, make_batch

TABLE_I = {  # layers, hidden, heads, ffn: the TAG paper's Table I plus the test model
    "transformer": (2, 100, 4, 200),
    "tinybert4": (4, 312, 12, 1200),
    "tinybert6": (6, 768, 12, 3072),
    "bert-base": (12, 768, 12, 3072),
    "bert-large": (24, 1024, 16, 4096),
    "tiny": (2, 32, 2, 64),
}


@pytest.mark.parametrize("name", sorted(TABLE_I))
def test_zoo_architectures(name):
    c = model_config(name, num_labels=3)
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == TABLE_I[name]
    assert c.hidden_act == "gelu" and c.num_labels == 3 and c.vocab_size == 30522


def test_built_model_matches_config_and_head():
    m = build_model("transformer", "normal:0.02", num_labels=3)
    assert len(m.bert.encoder.layer) == 2
    assert m.bert.encoder.layer[0].attention.self.num_attention_heads == 4
    assert m.classifier.out_features == 3


@pytest.mark.parametrize("std", [0.01, 0.03])
def test_normal_init_std(std):
    m = build_model("tiny", f"normal:{std}", seed=0)
    w = m.bert.encoder.layer[0].intermediate.dense.weight
    assert abs(w.std().item() - std) < 0.1 * std and abs(w.mean().item()) < 0.1 * std
    assert torch.all(m.bert.encoder.layer[0].intermediate.dense.bias == 0)
    assert torch.all(m.bert.embeddings.word_embeddings.weight[0] == 0)  # [PAD] row, as BERT's init


@pytest.mark.parametrize("r", [0.01, 0.03])
def test_uniform_init_range(r):
    m = build_model("tiny", f"uniform:{r}", seed=0)
    w = m.bert.embeddings.word_embeddings.weight[1:]
    assert w.abs().max().item() <= r
    assert w.abs().max().item() > 0.99 * r
    assert abs(w.std().item() - r / 3**0.5) < 0.05 * r
    assert torch.all(m.bert.embeddings.LayerNorm.weight == 1)


def test_init_is_seeded():
    a, b = build_model("tiny", seed=5), build_model("tiny", seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_minilm_pretrained_offline():
    m = build_model("minilm-l6", "pretrained", num_labels=2)
    c = m.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (6, 384, 12, 1536)
    # pretrained weights, not an init: the word embeddings are far from N(0, 0.02)
    assert abs(m.bert.embeddings.word_embeddings.weight.std().item() - 0.02) > 0.01


@pytest.mark.parametrize("spec", ["normal", "normal:-0.1", "normal:0", "gauss:0.02", "uniform:x", "pretrained:1", ""])
def test_bad_init_specs(spec):
    with pytest.raises(UsageError, match="init spec"):
        parse_init(spec)


def test_unknown_model_and_no_pretrained_weights():
    with pytest.raises(UsageError, match="unknown model 'gpt5'.*tinybert4"):
        build_model("gpt5")
    with pytest.raises(UsageError, match="no pretrained weights"):
        build_model("tiny", "pretrained")


def test_tokenizer_round_trip_offline():
    tok = load_tokenizer()
    assert len(tok) == 30522
    text = "anna smith paid 45 dollars in berlin on may 3."
    batch = make_batch(tok, [text, "hello"], [1, 0])
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert decode(tok, ids) == text
    assert batch["attention_mask"][1].sum().item() == 3 and batch["labels"].tolist() == [1, 0]


def test_vocab_file_sets_model_size(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    tok = load_tokenizer(str(vocab))
    assert len(tok) == 7
    assert tok("hello world")["input_ids"] == [2, 5, 6, 3]
    m = build_model("tiny", vocab_size=len(tok))
    assert m.bert.embeddings.word_embeddings.num_embeddings == 7
