"""Tests never touch the network or ../shared: hubs off, small threads, data made here."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.pop("FEDLEAK_GLUE_DIR", None)

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model ops gain nothing from threads, and on a shared 2-core machine a second spinning thread can
    slow them a hundredfold. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    from fedsim.core.text import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny():
    """The attack tests' model. uniform:0.1 rather than normal:0.02: with 32 hidden units and std 0.02 weights the
    tiny model's gradient barely depends on its input (a 0.02 perturbation of every embedding moves it by ~1e-6)."""
    from fedsim.core.models import build_model

    return build_model("tiny", "uniform:0.1", seed=0)
