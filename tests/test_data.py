"""GLUE-layout loading, the pii generator, partitioning."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.core.data import load_task, partition
from fedsim.core.data.pii import generate_pii
from fedsim.core.errors import UsageError


@pytest.fixture()
def glue_dir(tmp_path):
    (tmp_path / "CoLA").mkdir()
    (tmp_path / "CoLA" / "train.tsv").write_text(
        "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
        "gj04\t0\t*\tThe more we study verbs, the crazier they get get.\n"
        'cj99\t1\t\tHe said "hello" to me.')  # no trailing newline, a quote inside: as in the real file
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_text(
        "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n\" unflinchingly bleak \t0\n")
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve died.\tReeve had an accident.\tnot_entailment\n"
        "1\tThe cat sat.\tA cat sat.\tentailment\n")
    return tmp_path


def test_cola_without_header(glue_dir):
    task = load_task("cola", "train", data_dir=str(glue_dir))
    assert len(task) == 3 and not task.is_pair
    assert task.dataset["label"] == [1, 0, 1]
    assert task.dataset[2]["text"] == 'He said "hello" to me.'


def test_sst2_with_header_and_quotes(glue_dir):
    task = load_task("sst2", "dev", data_dir=str(glue_dir))
    assert task.dataset["text"] == ["it 's a charming and often affecting journey .", '" unflinchingly bleak']
    assert task.dataset["label"] == [1, 0]


def test_rte_pairs_and_string_labels(glue_dir):
    task = load_task("rte", "train", data_dir=str(glue_dir))
    assert task.is_pair
    assert task.dataset[0] == {"text": "Dana Reeve died.", "label": 1, "text_pair": "Reeve had an accident."}
    assert task.dataset["label"] == [1, 0]


def test_env_var_selects_local_dir(glue_dir, monkeypatch):
    monkeypatch.setenv("FEDLEAK_GLUE_DIR", str(glue_dir))
    assert len(load_task("rte", "train")) == 2


def test_missing_and_malformed_files(glue_dir, tmp_path):
    with pytest.raises(UsageError, match="missing GLUE file .*CoLA/dev.tsv"):
        load_task("cola", "dev", data_dir=str(glue_dir))
    (glue_dir / "SST-2" / "train.tsv").write_text("text\tscore\nfoo\t1\n")
    with pytest.raises(UsageError, match="missing column"):
        load_task("sst2", "train", data_dir=str(glue_dir))
    (glue_dir / "SST-2" / "train.tsv").write_text("sentence\tlabel\nfoo\tmaybe\n")
    with pytest.raises(UsageError, match="malformed label 'maybe'"):
        load_task("sst2", "train", data_dir=str(glue_dir))


def test_unknown_dataset_and_split():
    with pytest.raises(UsageError, match="unknown dataset 'mnli'.*cola, sst2, rte, pii"):
        load_task("mnli")
    with pytest.raises(UsageError, match="unknown split 'test'"):
        load_task("pii", "test")


def test_pii_is_deterministic_and_carries_pii():
    a, b, c = generate_pii("train", seed=3, size=50), generate_pii("train", seed=3, size=50), generate_pii("train", seed=4, size=50)
    assert a["text"] == b["text"] and a["label"] == b["label"]
    assert a["text"] != c["text"]
    assert set(a["label"]) == {0, 1}
    assert sum(any(ch.isdigit() for ch in t) for t in a["text"]) > 25  # amounts, dates, accounts
    dev = generate_pii("dev", seed=3, size=50)
    assert not set(dev["text"]) & set(a["text"])


def test_iid_partition_disjoint_complete_balanced():
    labels = np.arange(103) % 2
    shards = partition(labels, 4, "iid", seed=1)
    allidx = np.concatenate(shards)
    assert sorted(allidx.tolist()) == list(range(103))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [s.tolist() for s in shards] == [s.tolist() for s in partition(labels, 4, "iid", seed=1)]
    assert [s.tolist() for s in shards] != [s.tolist() for s in partition(labels, 4, "iid", seed=2)]


def _label_skew(labels, shards):
    return float(np.mean([abs(labels[s].mean() - labels.mean()) for s in shards]))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.random.default_rng(0).integers(0, 2, 2000)
    skews = []
    for alpha in (100.0, 1.0, 0.05):
        shards = partition(labels, 5, f"dirichlet:{alpha}", seed=0)
        assert sorted(np.concatenate(shards).tolist()) == list(range(2000))
        assert all(len(s) for s in shards)
        skews.append(_label_skew(labels, shards))
    assert skews[0] < skews[1] < skews[2]
    assert skews[0] < 0.05 and skews[2] > 0.25


@pytest.mark.parametrize("spec", ["dirichlet", "dirichlet:-1", "dirichlet:abc", "shards:3", "iid:2"])
def test_bad_partition_specs(spec):
    with pytest.raises(UsageError, match="partition"):
        partition([0, 1, 0, 1], 2, spec)


def test_bad_client_counts():
    with pytest.raises(UsageError, match="positive"):
        partition([0, 1], 0)
    with pytest.raises(UsageError, match="cannot split 2 examples across 3"):
        partition([0, 1], 3)
