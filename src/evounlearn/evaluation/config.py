"""The TOFU suite's options (torch-free, so that the command line checks them before importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    max_new_tokens: int = 200
    batch_size: int = 64
    min_k: float = 0.4
    max_examples: int | None = None  # per split; None = all (open-unlearning); TOFU used 300
    mia: bool = True
    es_reference_quirk: bool = False  # reproduce open-unlearning's ES floor at 1/|y|
