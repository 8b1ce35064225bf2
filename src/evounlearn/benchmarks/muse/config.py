"""The MUSE-News setting's configuration (`MuseConfig`) and where its data comes from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ...models.tiny import TinyModelConfig
from ...training.finetune import FinetuneConfig

#: the MUSE-News data when `source` is not set: $EVOUNLEARN_MUSE_DATA (a local folder), else the Hub
HUB_ID = "muse-bench/MUSE-News"


def default_muse_source() -> str:
    """`$EVOUNLEARN_MUSE_DATA` (a local MUSE-News folder) when set, else the Hub dataset id."""
    return os.environ.get("EVOUNLEARN_MUSE_DATA") or HUB_ID


def _default_model() -> TinyModelConfig:
    return TinyModelConfig(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                           num_attention_heads=4, max_position_embeddings=96)


def _default_train() -> FinetuneConfig:
    return FinetuneConfig(epochs=24, lr=5e-3, batch_size=16, warmup_ratio=0.05, max_length=96)


@dataclass
class MuseConfig:
    source: str = ""  # a local MUSE folder or the Hub id; default: $EVOUNLEARN_MUSE_DATA, else the Hub
    n_verbmem: int = 50
    n_knowmem: int = 100  # forget and retain QA each
    n_privleak: int = 50  # privleak forget (members) and holdout texts
    n_retain_texts: int = 50  # privleak/retain2 texts in the retain corpus
    context: int = 96  # model context = VerbMem prompt window + verbmem_tokens
    verbmem_tokens: int = 64  # VerbMem continuation length (MUSE: 128)
    knowmem_tokens: int = 32  # KnowMem new tokens (as MUSE)
    knowmem_icl: int = 2  # in-context examples (MUSE: all 10; a 96-token context holds ~2)
    knowmem_sentences: bool = True  # add the article sentence holding each forget answer
    model: TinyModelConfig = field(default_factory=_default_model)
    train: FinetuneConfig = field(default_factory=_default_train)
    cache_dir: str = ""  # default: $EVOUNLEARN_CACHE or ./cache
    eval_batch_size: int = 32
