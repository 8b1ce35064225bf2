"""The training options: the unlearning loop's `TrainConfig` and fine-tuning's `FinetuneConfig`
(torch-free, so that the command line checks them before importing torch)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    lr: float = 1e-4
    epochs: int = 5
    max_steps: int = 0  # > 0: stop after this many optimizer steps
    batch_size: int = 8  # forget rows per micro-batch per process (retain batches are paired)
    grad_accum: int = 1
    schedule: str = "linear"  # linear | constant | cosine
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    max_length: int = 256
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: str = "all-linear"
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    eval_every_epochs: int = 0  # 0 = no evaluation during training
    early_stopping_metric: str = ""  # e.g. forget_quality; empty = keep the last model
    early_stopping_mode: str = "max"
    early_stopping_patience: int = 0
    checkpoint_every_steps: int = 0  # 0 = at the end of every epoch only
    ref_cache: bool = True  # False: recompute per-sequence reference log-probs every step (naive baseline)
    pair_retain: bool = False  # forward the paired retain batch even when the loss ignores it (timing parity)


@dataclass
class FinetuneConfig:
    epochs: int = 40
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    batch_size: int = 32
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    max_length: int = 128
