"""The one unlearning loop, for every method, built on accelerate.

Each step draws a forget micro-batch (a seeded per-epoch permutation, sharded across processes)
and, when the method needs it, a retain micro-batch of the same size (each process draws from its
own disjoint share of the retain set with its own seeded generator). Forget, retain and alt rows
go through the model in ONE forward pass; the method's pure loss function turns the outputs into
a scalar. Frozen per-sequence reference log-probs are computed once before training and cached by
example index; per-token reference logits come from the frozen model without gradient.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.prompting import EncodedQA, PromptFormatter
from ..errors import ConfigError, EvoUnlearnError
from ..files import atomic_write_json
from ..methods.base import MethodInputs, MethodSpec, SideOutputs
from ..models.device import model_device
from ..models.layers import layer_output_hook
from ..models.scoring import sequence_logprob, shift
from .config import TrainConfig  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


class NonFiniteLossError(EvoUnlearnError):
    """The loss or a gradient became NaN/Inf; the run stopped at the last good checkpoint."""


@dataclass
class UnlearnData:
    """Encoded forget / retain / alt rows; `alt[i]` answers forget question i (e.g. a refusal)."""

    forget: list[EncodedQA]
    retain: list[EncodedQA] = field(default_factory=list)
    alt: list[EncodedQA] | None = None


def _schedule(cfg: TrainConfig, total: int, steps_per_epoch: int) -> Callable[[int], float]:
    warm = cfg.warmup_steps or int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule not in {"linear", "constant", "cosine"}:
        raise ConfigError(f"unknown schedule {cfg.schedule!r} (linear, constant, cosine)")

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _collate(fmt: PromptFormatter, groups: Sequence[Sequence[EncodedQA]]) -> tuple[dict[str, torch.Tensor], list[slice]]:
    """One right-padded batch holding every group's rows; returns the row slice of each group."""
    rows = [x for g in groups for x in g]
    batch = fmt.collate(rows)
    slices, start = [], 0
    for g in groups:
        slices.append(slice(start, start + len(g)))
        start += len(g)
    return batch, slices


def _side(logits, batch, sl, index, hidden=None) -> SideOutputs:
    ids, labels, am = batch["input_ids"][sl], batch["labels"][sl], batch["attention_mask"][sl]
    return SideOutputs(
        logits=logits[sl, :-1, :],
        labels=labels[:, 1:],
        index=index,
        target_ids=ids[:, 1:],
        attention_mask=am[:, 1:],
        hidden=None if hidden is None else hidden[sl],
        hidden_mask=am,
    )


@torch.no_grad()
def sequence_logps(model, fmt: PromptFormatter, items: Sequence[EncodedQA], batch_size: int = 32) -> torch.Tensor:
    """Summed answer log-prob of each encoded row under `model` (used once, for the reference cache)."""
    device = model_device(model)
    out = []
    for i in range(0, len(items), batch_size):
        b = {k: v.to(device) for k, v in fmt.collate(items[i : i + batch_size]).items()}
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        out.append(sequence_logprob(*shift(logits, b["labels"])).cpu())
    return torch.cat(out) if out else torch.zeros(0)


class Unlearner:
    """Runs one method on one model. `run()` trains and returns the training record."""

    def __init__(self, model, fmt: PromptFormatter, spec: MethodSpec, params: Mapping[str, Any],
                 data: UnlearnData, cfg: TrainConfig, run_dir: str | Path | None = None,
                 evaluate: Callable[[Any], dict[str, Any]] | None = None,
                 batch_hook: Callable[[Any, list[int], list[EncodedQA]], list[EncodedQA]] | None = None,
                 on_step: Callable[[int], None] | None = None):
        from accelerate import Accelerator

        self.cfg = cfg
        self.spec = spec
        self.fmt = fmt
        self.data = data
        self.run_dir = Path(run_dir) if run_dir else None
        self.evaluate = evaluate
        self.batch_hook = batch_hook  # e.g. PMC replaces forget answers with self-generations
        # on_step(step) after each optimizer step, once the state is saved when the step is a
        # checkpoint step: a caller's monitor (progress, time budget) that may stop the run by raising
        self.on_step = on_step
        mp = cfg.mixed_precision
        if mp == "auto":
            mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        self.acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=mp,
                               cpu=not torch.cuda.is_available())
        self.params = dict(params)
        if not data.forget:
            raise ConfigError("the forget set is empty")
        needs = spec.needs_for(self.params)
        if "retain" in needs and not data.retain:
            raise ConfigError(f"method {spec.name} needs a retain set, and it is empty")
        if "alt" in needs and data.alt is None:
            raise ConfigError(f"method {spec.name} needs alternative answers (alt), none were given")
        if "self_generated" in needs and batch_hook is None:  # e.g. PMC: never train on the given answers
            raise ConfigError(f"method {spec.name} trains on the model's own samples: it needs its batch hook")
        self.needs = needs
        torch.manual_seed(cfg.seed)
        if spec.setup is not None:
            self.params.update(spec.setup(model, self.params) or {})

        # Frozen per-sequence reference log-probs, once, from the model before any update.
        self.ref_cache: dict[str, torch.Tensor] = {}
        seq_ref = bool({"ref_seq_logp", "ref_seq_logp_retain"} & needs)
        if seq_ref and cfg.ref_cache:
            model.to(self.acc.device)
            self.ref_cache["forget"] = sequence_logps(model, fmt, data.forget)
            if data.alt is not None and "alt" in needs:
                self.ref_cache["alt"] = sequence_logps(model, fmt, data.alt)
            if "ref_seq_logp_retain" in needs:
                self.ref_cache["retain"] = sequence_logps(model, fmt, data.retain)

        self.ref_model = None
        needs_ref_model = (bool({"ref_logits_forget", "ref_logits_retain"} & needs) or "hidden" in needs
                           or (seq_ref and not cfg.ref_cache))
        if needs_ref_model and not cfg.lora:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False).to(self.acc.device)

        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                     lora_dropout=cfg.lora_dropout,
                                                     target_modules=cfg.lora_targets, task_type="CAUSAL_LM"))
        trainable = spec.trainable(model, self.params) if spec.trainable is not None else None
        if trainable is not None:
            names = set(trainable)
            for n, p in model.named_parameters():
                p.requires_grad_(n in names)
        self.model = model
        params_to_train = [p for p in model.parameters() if p.requires_grad]
        if not params_to_train:
            raise ConfigError(f"method {spec.name}: no trainable parameters")

        world = self.acc.num_processes
        self.steps_per_epoch = max(1, len(data.forget) // (cfg.batch_size * world)) // cfg.grad_accum
        self.steps_per_epoch = max(1, self.steps_per_epoch)
        total = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps > 0:
            total = min(total, cfg.max_steps) if cfg.epochs > 0 else cfg.max_steps
        self.total_steps = total
        opt = torch.optim.AdamW(params_to_train, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total, self.steps_per_epoch))
        # The scheduler is not handed to accelerate: it would step it once per process, while
        # total_steps already counts optimizer steps of the whole (multi-process) run.
        self.model, self.opt = self.acc.prepare(model, opt)
        self.sched = sched
        # Retain rows are split between processes so they never draw the same rows.
        perm = np.random.default_rng(cfg.seed).permutation(len(data.retain)) if data.retain else np.array([], int)
        self.retain_share = perm[self.acc.process_index :: world] if len(perm) >= world else perm
        self.state = {"step": 0, "epoch": 0, "micro": 0, "best": None, "best_step": None, "bad_evals": 0,
                      "loss_history": [], "epoch_losses": [], "evals": []}
        self._seconds_before, self._session_t0 = 0.0, None  # training seconds of earlier sessions, this one's start

    # -- batches --------------------------------------------------------------------------------
    def _forget_order(self, epoch: int) -> list[int]:
        rng = random.Random(self.cfg.seed * 1_000_003 + epoch)
        order = list(range(len(self.data.forget)))
        rng.shuffle(order)
        world, rank = self.acc.num_processes, self.acc.process_index
        per = self.cfg.batch_size * world
        usable = (len(order) // per) * per or len(order)
        # Global batch b holds order[b*per:(b+1)*per]; this process takes its contiguous slice of it.
        mine = []
        for b in range(0, usable, per):
            chunk = order[b : b + per]
            k = len(chunk) // world or len(chunk)
            mine.extend(chunk[rank * k : (rank + 1) * k])
        return mine

    def _retain_rows(self, n: int, micro: int) -> list[int]:
        # A generator of this process's own, seeded by (seed, rank, micro-step): resumable exactly.
        g = np.random.default_rng([self.cfg.seed, self.acc.process_index, micro])
        return [int(self.retain_share[i]) for i in g.integers(0, len(self.retain_share), size=n)]

    # -- one micro-step ---------------------------------------------------------------------------
    def _loss(self, idx: list[int], micro: int) -> torch.Tensor:
        d, dev = self.data, self.acc.device
        forget_rows = [d.forget[i] for i in idx]
        if self.batch_hook is not None:
            forget_rows = self.batch_hook(self.acc.unwrap_model(self.model), idx, forget_rows)
        groups = [forget_rows]
        names = ["forget"]
        r_idx: list[int] = []
        if "retain" in self.needs or self.cfg.pair_retain:
            r_idx = self._retain_rows(len(idx), micro)
            groups.append([d.retain[i] for i in r_idx])
            names.append("retain")
        if "alt" in self.needs and d.alt is not None:
            groups.append([d.alt[i] for i in idx])
            names.append("alt")
        batch, slices = _collate(self.fmt, groups)
        batch = {k: v.to(dev) for k, v in batch.items()}
        self._last_tokens = int(batch["attention_mask"].sum())
        layer = self.params.get("layer") if "hidden" in self.needs else None
        hook = layer_output_hook(self.acc.unwrap_model(self.model), int(layer)) if layer is not None else nullcontext()
        with hook as rec:
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        hidden = rec[-1] if layer is not None else None
        index = {"forget": torch.tensor(idx), "retain": torch.tensor(r_idx), "alt": torch.tensor(idx)}
        sides = {n: _side(logits, batch, sl, index[n], hidden) for n, sl in zip(names, slices)}
        self._add_reference(sides, batch, slices, names, idx, layer)
        inputs = MethodInputs(forget=sides["forget"], retain=sides.get("retain"), alt=sides.get("alt"))
        loss = self.spec.loss(inputs, self.params)
        if self.spec.state_update is not None:  # e.g. PDU's dual variable (saved with the params)
            with torch.no_grad():
                self.params.update(self.spec.state_update(inputs, self.params, int(self.state["epoch"])) or {})
        return loss

    @torch.no_grad()
    def _add_reference(self, sides, batch, slices, names, idx, layer) -> None:
        if "forget" in self.ref_cache:
            sides["forget"].ref_seq_logp = self.ref_cache["forget"][idx].to(self.acc.device)
        if "alt" in sides and "alt" in self.ref_cache:
            sides["alt"].ref_seq_logp = self.ref_cache["alt"][idx].to(self.acc.device)
        if "retain" in sides and "retain" in self.ref_cache:
            sides["retain"].ref_seq_logp = self.ref_cache["retain"][sides["retain"].index].to(self.acc.device)
        want = {n for n in names if f"ref_logits_{n}" in self.needs}
        want_hidden = layer is not None and "retain" in names
        naive_seq = not self.cfg.ref_cache and bool({"ref_seq_logp", "ref_seq_logp_retain"} & self.needs)
        if not want and not want_hidden and not naive_seq:
            return
        unwrapped = self.acc.unwrap_model(self.model)
        if self.ref_model is not None:
            ref, ctx = self.ref_model, nullcontext()
        else:  # LoRA: the frozen model is the base model with the adapter switched off
            ref, ctx = unwrapped, unwrapped.disable_adapter()
        hook = layer_output_hook(ref, int(layer)) if want_hidden else nullcontext()
        with ctx, hook as rec:
            ref_logits = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        for n, sl in zip(names, slices):
            if n in want:
                sides[n].ref_logits = ref_logits[sl, :-1, :].float()
            if want_hidden:
                sides[n].ref_hidden = rec[-1][sl]
            if naive_seq:  # the uncached way: a second model's forward pass every step
                sides[n].ref_seq_logp = sequence_logprob(*shift(ref_logits[sl], batch["labels"][sl]))

    # -- checkpoints ------------------------------------------------------------------------------
    def _ckpt_dir(self) -> Path | None:
        return self.run_dir / "checkpoint" if self.run_dir else None

    def trainable_state(self) -> dict[str, torch.Tensor]:
        m = self.acc.unwrap_model(self.model)
        return {n: p.detach().cpu().clone() for n, p in m.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        d = self._ckpt_dir()
        if d is None:
            return
        self.acc.wait_for_everyone()
        if self._session_t0 is not None:  # training seconds so far, over every session (for --resume)
            self.state["seconds"] = self._seconds_before + time.time() - self._session_t0
        if self.acc.is_main_process:
            tmp = d.with_name("checkpoint.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            torch.save({
                "weights": self.trainable_state(),
                "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(),
                "ref_cache": self.ref_cache,
                "params": {k: v for k, v in self.params.items()},
                "torch_rng": torch.get_rng_state(),
                "hook_state": self.batch_hook.state_dict() if hasattr(self.batch_hook, "state_dict") else None,
                "state": self.state,
            }, tmp / "state.pt")
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
        self.acc.wait_for_everyone()

    def load_checkpoint(self) -> bool:
        d = self._ckpt_dir()
        if d is None or not (d / "state.pt").exists():
            return False
        ck = torch.load(d / "state.pt", map_location="cpu", weights_only=False)
        m = self.acc.unwrap_model(self.model)
        named = dict(m.named_parameters())
        with torch.no_grad():
            for n, w in ck["weights"].items():
                named[n].copy_(w.to(named[n].device))
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.ref_cache = ck["ref_cache"]
        self.params.update(ck["params"])
        torch.set_rng_state(ck["torch_rng"])
        if ck.get("hook_state") is not None and hasattr(self.batch_hook, "load_state_dict"):
            self.batch_hook.load_state_dict(ck["hook_state"])
        self.state = ck["state"]
        log.info("resumed from %s at step %d (epoch %d)", d, self.state["step"], self.state["epoch"])
        return True

    # -- evaluation during training ---------------------------------------------------------------
    def _maybe_evaluate(self, epoch: int) -> bool:
        """Evaluate after `epoch` (1-based) when due; returns True when early stopping triggers."""
        cfg = self.cfg
        if not self.evaluate or not cfg.eval_every_epochs or epoch % cfg.eval_every_epochs:
            return False
        stop = False
        if self.acc.is_main_process:
            summary = self.evaluate(self.acc.unwrap_model(self.model))
            self.state["evals"].append({"epoch": epoch, "step": self.state["step"], **summary})
            key = cfg.early_stopping_metric
            if key:
                value = summary.get(key)
                if value is None:
                    raise ConfigError(f"early_stopping_metric {key!r} is not among the evaluation metrics")
                better = self.state["best"] is None or (
                    value > self.state["best"] if cfg.early_stopping_mode == "max" else value < self.state["best"])
                if better:
                    self.state.update(best=value, best_step=self.state["step"], bad_evals=0)
                    self._best_weights = self.trainable_state()
                else:
                    self.state["bad_evals"] += 1
                    stop = cfg.early_stopping_patience > 0 and self.state["bad_evals"] >= cfg.early_stopping_patience
            log.info("eval after epoch %d: %s", epoch, {k: summary.get(k) for k in ("forget_quality", "model_utility",
                                                                                  "forget_rouge")})
        flag = torch.tensor([1 if stop else 0], device=self.acc.device)
        return bool(self.acc.reduce(flag, reduction="sum").item()) if self.acc.num_processes > 1 else stop

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        if resume:
            self.load_checkpoint()
        self._best_weights = None
        model = self.model
        model.train()
        t0 = time.time()
        # a resumed run counts the sessions before it (up to their last checkpoint) in `seconds`
        self._seconds_before, self._session_t0 = float(self.state.get("seconds", 0.0) or 0.0), t0
        tokens = 0
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc=f"unlearn {self.spec.name} ({torch.get_num_threads()} threads)",
                   unit="step", disable=not self.acc.is_main_process, leave=False, mininterval=1.0)
        steps_this_session = 0
        stopped_early = False
        first_step_at: float | None = None
        while self.state["step"] < self.total_steps:
            epoch = self.state["epoch"]
            order = self._forget_order(epoch)
            micro_per_epoch = self.steps_per_epoch * cfg.grad_accum
            start_micro = self.state["micro"] - epoch * micro_per_epoch
            epoch_loss = []
            for m in range(start_micro, micro_per_epoch):
                idx = order[m * cfg.batch_size : (m + 1) * cfg.batch_size]
                if not idx:
                    break
                with self.acc.accumulate(model):
                    loss = self._loss(idx, self.state["micro"])
                    if not torch.isfinite(loss):
                        self._fail(f"non-finite loss ({float(loss.detach())}) at step {self.state['step']}")
                    self.acc.backward(loss)
                    if self.acc.sync_gradients:
                        norm = self.acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm or float("inf"))
                        if norm is not None and not torch.isfinite(torch.as_tensor(norm)):
                            self._fail(f"non-finite gradient norm at step {self.state['step']}")
                    self.opt.step()
                    if self.acc.sync_gradients:
                        self.sched.step()
                    self.opt.zero_grad(set_to_none=True)
                self.state["micro"] += 1
                epoch_loss.append(float(loss.detach()))
                tokens += self._last_tokens
                if self.acc.sync_gradients:
                    self.state["step"] += 1
                    steps_this_session += 1
                    if first_step_at is None:
                        first_step_at = time.time()  # startup cost = this minus the process start
                    self.state["loss_history"].append(float(loss.detach()))
                    bar.update(1)
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", lr=f"{self.sched.get_last_lr()[0]:.2e}")
                    if cfg.checkpoint_every_steps and self.state["step"] % cfg.checkpoint_every_steps == 0:
                        self.save_checkpoint()
                    if self.on_step is not None:
                        self.on_step(self.state["step"])
                    if self.state["step"] >= self.total_steps:
                        break
            self.state["epoch_losses"].append(float(np.mean(epoch_loss)) if epoch_loss else float("nan"))
            self.state["epoch"] += 1
            self.state["micro"] = self.state["epoch"] * micro_per_epoch
            self.save_checkpoint()
            if self._maybe_evaluate(self.state["epoch"]):
                stopped_early = True
                break
        bar.close()
        if self._best_weights is not None and cfg.early_stopping_metric:
            self._restore(self._best_weights)
        seconds = time.time() - t0
        steps = max(1, steps_this_session)
        return {
            "steps": self.state["step"],
            "epochs": self.state["epoch"],
            "seconds": self._seconds_before + seconds,  # every session's training time
            "session_seconds": seconds,  # this process's part (the whole run unless resumed)
            "seconds_per_step": seconds / steps,
            "tokens_per_second": tokens / max(seconds, 1e-9),
            "loss_history": self.state["loss_history"],
            "epoch_losses": self.state["epoch_losses"],
            "evals": self.state["evals"],
            "stopped_early": stopped_early,
            "first_step_at": first_step_at,
            "best_step": self.state["best_step"],
        }

    def _restore(self, weights: dict[str, torch.Tensor]) -> None:
        named = dict(self.acc.unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for n, w in weights.items():
                named[n].copy_(w.to(named[n].device))

    def _fail(self, what: str) -> None:
        d = self._ckpt_dir()
        where = f"; the last good checkpoint is {d}" if d and (d / "state.pt").exists() else ""
        if d and (d / "state.pt").exists():
            ck = torch.load(d / "state.pt", map_location="cpu", weights_only=False)
            self._restore(ck["weights"])
        raise NonFiniteLossError(f"{what} (method {self.spec.name}, lr {self.cfg.lr}){where}")

    def unwrapped(self):
        return self.acc.unwrap_model(self.model)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=1, default=str)
