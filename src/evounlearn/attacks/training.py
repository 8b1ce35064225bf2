"""The fine-tuning attacks (relearn, finetune) through the one training loop
(`training.loop.Unlearner`) with a plain NLL loss on the attacker's rows: no second loop."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.prompting import EncodedQA, PromptFormatter
from ..errors import ConfigError


def _nll_loss(inputs: Any, params: Mapping[str, Any]) -> Any:
    """Learning, not unlearning: the token-mean NLL of the rows' answers."""
    return inputs.forget.nll


def train_copy(model: Any, fmt: PromptFormatter, rows: Sequence[EncodedQA], *, lr: float, batch_size: int,
               seed: int, steps: int = 0, epochs: int = 0, schedule: str = "constant", lora: bool = False,
               lora_r: int = 8, lora_alpha: int = 32) -> tuple[Any, dict[str, Any]]:
    """A copy of `model` fine-tuned on `rows` for `steps` optimizer steps (or `epochs` epochs);
    a LoRA adapter is merged into the copy's weights. Returns (the new model, the loop's record)."""
    from ..methods.base import MethodSpec
    from ..training.config import TrainConfig
    from ..training.loop import UnlearnData, Unlearner

    if not rows:
        raise ConfigError("the attack has no rows to train on")
    per_epoch = max(1, len(rows) // batch_size)
    if steps <= 0 and epochs <= 0:
        raise ConfigError("the attack needs steps or epochs >= 1")
    n_epochs = epochs if epochs > 0 else math.ceil(steps / per_epoch)
    cfg = TrainConfig(lr=lr, epochs=n_epochs, max_steps=steps if steps > 0 else 0, batch_size=batch_size,
                      schedule=schedule, seed=seed, lora=lora, lora_r=lora_r, lora_alpha=lora_alpha,
                      mixed_precision="no")
    spec = MethodSpec(name="attack_finetune", loss=_nll_loss, needs=frozenset())
    work = copy.deepcopy(model)
    work.train()
    loop = Unlearner(work, fmt, spec, {}, UnlearnData(forget=list(rows)), cfg)
    record = loop.run()
    out = loop.unwrapped()
    if lora:
        out = out.merge_and_unload()
    out.eval()
    return out, {k: record[k] for k in ("steps", "epochs", "seconds", "loss_history")}
