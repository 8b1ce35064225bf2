from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EVOUNLEARN_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real TOFU, MUSE-News, WMDP, MMLU); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark data not found at {SHARED_DATA} (set EVOUNLEARN_SHARED_DATA)")
    return SHARED_DATA

# Tests never reach the Hub: fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from intra-op threads, and tests that start worker processes would
# oversubscribe the cores (OpenMP spin-waiting makes that ~30x slower): one thread everywhere.
os.environ.setdefault("OMP_NUM_THREADS", "1")
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


def tiny_prepare_config(cache_dir: Path, **over):
    """A very small generated benchmark and model: trains in seconds on CPU."""
    from evounlearn.benchmarks.tofu import PrepareConfig
    from evounlearn.data.generated import GeneratedConfig
    from evounlearn.evaluation.tofu_eval import EvalConfig
    from evounlearn.models.tiny import TinyModelConfig
    from evounlearn.training.finetune import FinetuneConfig

    cfg = PrepareConfig(
        generated=GeneratedConfig(authors=10, questions_per_author=4, holdout_authors=2, general_items=8,
                                  retain_perturbed_authors=2),
        model=TinyModelConfig(vocab_size=400, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                              num_attention_heads=2, max_position_embeddings=128),
        train=FinetuneConfig(epochs=12, batch_size=16, lr=5e-3),
        eval=EvalConfig(max_new_tokens=24),
        cache_dir=str(cache_dir),
    )
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """The tiny benchmark prepared once per test session: (config, Prepared)."""
    from evounlearn.benchmarks.tofu import prepare

    cfg = tiny_prepare_config(tmp_path_factory.mktemp("cache"))
    return cfg, prepare(cfg)
