"""The tiny model recipe's options (torch-free, so that the command line checks them before importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TinyModelConfig:
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = True
