"""Plain causal-LM fine-tuning: how every benchmark's `prepare` makes the target model and the
retain oracle, on question/answer pairs (answer tokens only carry loss) or on ready-made
rows (raw text: labels on every token after the first)."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..data.prompting import EncodedQA, PromptFormatter
from .config import FinetuneConfig  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def lr_lambda(total: int, warmup: int, min_ratio: float):
    """Linear warmup, then cosine decay to `min_ratio` of the peak."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def finetune(model, fmt: PromptFormatter, pairs: Sequence[tuple[str, str]], cfg: FinetuneConfig,
             desc: str = "train") -> dict:
    """Train `model` in place on (question, answer) pairs; returns loss history and speed."""
    return finetune_rows(model, fmt, [fmt.encode(q, a) for q, a in pairs], cfg, desc)


def finetune_rows(model, fmt: PromptFormatter, encoded: Sequence[EncodedQA], cfg: FinetuneConfig,
                  desc: str = "train") -> dict:
    """The training loop on ready-made rows (QA pairs or raw text); loss on the labelled tokens."""
    if not encoded:
        from ..errors import ConfigError

        raise ConfigError("nothing to train on")
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(cfg.warmup_ratio * total), cfg.min_lr_ratio))
    model.train()
    history: list[float] = []
    tokens = 0
    t0 = time.time()
    bar = tqdm(total=total, desc=f"{desc} ({torch.get_num_threads()} threads)", unit="step", leave=False,
               mininterval=1.0)
    for _epoch in range(cfg.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        epoch_loss = 0.0
        for i in range(0, len(order), cfg.batch_size):
            batch = fmt.collate([encoded[j] for j in order[i : i + cfg.batch_size]])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            epoch_loss += float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", tok_s=f"{tokens / (time.time() - t0):.0f}")
        history.append(epoch_loss / steps_per_epoch)
    bar.close()
    model.eval()
    seconds = time.time() - t0
    log.info("%s: %d steps in %.1fs, final loss %.4f, %.0f tokens/s", desc, total, seconds, history[-1],
             tokens / max(seconds, 1e-9))
    return {"loss_history": history, "seconds": seconds, "steps": total, "tokens": tokens,
            "tokens_per_second": tokens / max(seconds, 1e-9)}
