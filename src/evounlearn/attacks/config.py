"""The recovery attacks' options (torch-free, so that the command line checks them before
importing torch). Defaults come from the papers (docs/METRICS.md "Recovery attacks"); where a
paper's value makes no sense on the tiny model it is scaled, and the comment says so.

- `QuantizeOptions`: Zhang et al. (ICLR'25): bitsandbytes `load_in_4bit` (FP4, blockwise absmax,
  block 64) or `load_in_8bit` (LLM.int8, per-row absmax).
- `RelearnOptions`: Hu et al. (ICLR'25) as run by OPTML-Group/Unlearn-Smooth (lr 1e-5, batch 4,
  50-150 steps on the forget text for MUSE, 100 for WMDP) and Deeb & Roger's RTT split (train on
  some forget facts, score on the others). The lr is scaled to the tiny model: 1e-5 is ~1/1000 of
  what a 7B model was fine-tuned with; the tiny target is fine-tuned at 3e-3 and unlearned at
  1e-3, so relearning uses 1e-3 (at 1e-5 nothing moves in 50 steps on a 1M-parameter model).
- `FinetuneOptions`: Łucki et al. (unrelated fine-tuning: LoRA rank 128, lr 2e-4, 3 epochs on as
  few as 10 examples). On the tiny model (hidden size 128) rank 128 is full rank, kept; the lr is
  scaled as for relearning (1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError


@dataclass
class QuantizeOptions:
    """`bits` 8 (int8 per-row absmax) or 4 (`quant_type` fp4 | nf4, blockwise absmax, `blocksize`)."""

    bits: int = 4
    quant_type: str = "fp4"  # bitsandbytes' and transformers' default for load_in_4bit (Zhang et al.)
    blocksize: int = 64  # bitsandbytes' 4-bit block size
    skip: str = "lm_head"  # Linear modules kept in full precision (transformers' llm_int8_skip_modules default)

    def check(self) -> None:
        if self.bits not in (8, 4):
            raise ConfigError(f"quantize: bits must be 8 or 4 (got {self.bits})")
        if self.quant_type not in ("fp4", "nf4"):
            raise ConfigError(f"quantize: quant_type must be fp4 or nf4 (got {self.quant_type!r})")
        if self.blocksize < 2 or self.blocksize & (self.blocksize - 1):
            raise ConfigError(f"quantize: blocksize must be a power of two >= 2 (got {self.blocksize})")


@dataclass
class RelearnOptions:
    """k steps of plain fine-tuning (NLL of the answers) on text the attacker holds."""

    steps: int = 50  # Unlearn-Smooth's MUSE protocol: 50-150 steps (WMDP: 100)
    lr: float = 1e-3  # paper 1e-5 at 7B; scaled to the tiny model (module docstring)
    batch_size: int = 4  # the papers' batch size
    source: str = "forget"  # forget: an RTT split of the forget rows | related: other rows of the same kind
    fraction: float = 0.5  # forget: the share of the forget rows trained on (the rest is scored)
    rows: int = 0  # related: how many rows (0: as many as the RTT split trains on)
    file: str = ""  # related: a JSONL file of {"question", "answer"} rows instead of the benchmark's
    schedule: str = "constant"  # Unlearn-Smooth relearns at a constant lr
    seed: int = 0

    def check(self) -> None:
        if self.steps < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ConfigError(f"relearn: need steps >= 1, lr > 0, batch_size >= 1 (got {self.steps}, {self.lr}, "
                              f"{self.batch_size})")
        if self.source not in ("forget", "related"):
            raise ConfigError(f"relearn: source must be forget or related (got {self.source!r})")
        if not 0.0 < self.fraction < 1.0:
            raise ConfigError(f"relearn: fraction must be in (0, 1) (got {self.fraction})")


@dataclass
class FinetuneOptions:
    """Fine-tuning on text unrelated to the forget set (general-knowledge rows, or a file)."""

    epochs: int = 3  # Łucki et al.
    rows: int = 10  # Łucki et al.: as few as 10 examples
    lr: float = 1e-3  # paper 2e-4 (LoRA, 7B); scaled to the tiny model
    batch_size: int = 2  # 10 rows -> 5 steps per epoch, 15 steps
    lora: bool = True  # Łucki et al. fine-tune a LoRA adapter (merged into the weights afterwards)
    lora_r: int = 128  # Łucki et al.; full rank on the tiny model (hidden size 128)
    lora_alpha: int = 128  # scaling alpha / r = 1
    file: str = ""  # a JSONL file of {"question", "answer"} rows instead of the general-knowledge rows
    seed: int = 0

    def check(self) -> None:
        if self.epochs < 1 or self.rows < 1 or self.lr <= 0 or self.batch_size < 1 or self.lora_r < 1:
            raise ConfigError("finetune: need epochs, rows, batch_size, lora_r >= 1 and lr > 0 "
                              f"(got {self.epochs}, {self.rows}, {self.batch_size}, {self.lora_r}, {self.lr})")


@dataclass
class AttacksConfig:
    """Which recovery attacks a run or an evaluation applies, and their options."""

    names: str = ""  # comma-separated (attacks.names): e.g. quantize_4bit,relearn
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)  # bits / quant_type set per attack name
    relearn: RelearnOptions = field(default_factory=RelearnOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    # the TOFU metrics an attacked model is scored on (comma-separated registry names, with what
    # they need; empty: the run's whole evaluation). The `robust` fitness's search part scores only
    # what its calibrated term reads (no model utility: its generations are most of an evaluation)
    metrics: str = ""
    oracle: bool = False  # also attack the retain oracle (the recovery floor); the eval command and benchmark do
    cache: bool = True  # reuse an attack's evaluation for the same model weights and options
