"""PMC, partial model collapse (ICLR 2026, arXiv 2507.04219).

The forget answers never enter the objective. Before any update, the model's own greedy answer to
every forget question is computed once and kept (`original`). Then, on every forget micro-batch,
`PMCHook` (this method's `batch_hook_factory`):

1. samples `n_samples` answers from the *current* model for each question of the batch whose best
   score so far is > 0 (model in eval mode while sampling; all questions and all samples in ONE
   batched `generate` call with KV cache; temperature / top-p / `max_new_tokens`);
2. scores each sample against that question's original greedy answer:
   `score = ROUGE-L recall (stemming) + length_penalty * max(0, min_words - words) / min_words`
   where `words` = the sample's whitespace-separated word count; the penalty term is added only
   when `min_words > 0` and `length_penalty > 0` (both 0 by default: plain ROUGE-L recall);
3. selects the least similar sample: `tau = 0` -> argmin (the first on ties); `tau > 0` ->
   Bradley-Terry / softmax sampling, P(i) proportional to exp(-score_i / tau), drawn from the
   hook's own seeded generator;
4. replaces the question's stored answer when the selected score is <= the stored best score
   (the first sample always replaces: the best score starts at +inf); a question whose best score
   reached 0 is never sampled again;
5. returns the forget rows `fmt.encode(question, stored answer)`. Of the incoming rows (which hold
   the ground truth) only the prompt tokens are read, to find each row's question in the split
   (so a run on a part of the split, `forget_part`, whose loop indices are positions within the
   part, still maps to the right questions); their answer tokens are never looked at.

Loss: `NLL(stored answers) + lam * L_r`, `L_r` = NLL of the retain ground truth (or KL to the
frozen model with `retain_loss: kl`, as in GradDiff). Sampling runs under a forked torch RNG seeded
by (`seed`, number of hook calls), so it neither consumes nor depends on the training RNG and a
resumed run draws exactly the samples the uninterrupted run would; the hook's state (original and
best answers, best scores, call count, selection RNG) is saved in checkpoints.

Limitation: with several processes, each process keeps the memory of the questions it sees and the
checkpoint saves the main process's hook; resumed multi-process runs restart the others' memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from ..data.prompting import EncodedQA, PromptFormatter
from ..errors import ConfigError
from ..evaluation.metrics import rouge_l_recall
from .base import MethodInputs, register_method
from .grad_diff import retain_needs, retain_term

log = logging.getLogger(__name__)

# sampler(model, questions, n) -> n answers per question
Sampler = Callable[[Any, Sequence[str], int], list[list[str]]]


@dataclass
class PMCConfig:
    """PMC's options (the `loss:` section of configs/pmc.yaml)."""

    n_samples: int = 4
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 32
    tau: float = 0.0
    min_words: int = 0
    length_penalty: float = 0.0
    lam: float = 1.0
    retain_loss: str = "nll"
    seed: int = 0
    gen_batch_size: int = 64

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> PMCConfig:
        from ..config import apply_overrides

        names = {f.name for f in fields(cls)}
        cfg = apply_overrides(cls(), {k: v for k, v in params.items() if k in names and v is not None})
        if cfg.n_samples < 1:
            raise ConfigError(f"pmc: n_samples must be >= 1, got {cfg.n_samples}")
        if cfg.temperature <= 0 or not 0 < cfg.top_p <= 1:
            raise ConfigError(f"pmc: need temperature > 0 and 0 < top_p <= 1 (got {cfg.temperature}, {cfg.top_p})")
        if cfg.tau < 0 or cfg.min_words < 0 or cfg.length_penalty < 0 or cfg.max_new_tokens < 1:
            raise ConfigError("pmc: tau, min_words, length_penalty must be >= 0 and max_new_tokens >= 1")
        return cfg


# -- pure pieces ----------------------------------------------------------------------------------

def pmc_scores(samples: Sequence[str], reference: str, min_words: int = 0, length_penalty: float = 0.0) -> np.ndarray:
    """Score of each sample against the original greedy answer (lower = less similar).

    `ROUGE-L recall (stemming) + length_penalty * max(0, min_words - words) / min_words`, the
    penalty only when `min_words > 0` and `length_penalty > 0`; `words` = `len(sample.split())`.
    """
    scores = rouge_l_recall(list(samples), [reference] * len(samples), use_stemmer=True)
    if min_words > 0 and length_penalty > 0:
        words = np.array([len(s.split()) for s in samples], dtype=np.float64)
        scores = scores + length_penalty * np.maximum(0.0, min_words - words) / min_words
    return scores


def select_least_similar(scores: np.ndarray, tau: float = 0.0, rng: np.random.Generator | None = None) -> int:
    """argmin when `tau == 0`; else a draw with P(i) proportional to exp(-scores[i] / tau)."""
    scores = np.asarray(scores, dtype=np.float64)
    if tau <= 0:
        return int(np.argmin(scores))
    if rng is None:
        raise ValueError("tau > 0 needs a random generator")
    z = -scores / tau
    p = np.exp(z - z.max())
    return int(rng.choice(len(scores), p=p / p.sum()))


def sample_answers(model, fmt: PromptFormatter, questions: Sequence[str], n: int, *, temperature: float = 1.0,
                   top_p: float = 1.0, max_new_tokens: int = 32, seed: int | Sequence[int] = 0,
                   batch_size: int | None = None) -> list[list[str]]:
    """`n` sampled answers per question from `model` (eval mode while sampling; every question and
    sample in one batched `generate` call unless `batch_size` rows are given), under a forked torch
    RNG seeded by `seed`: neither consumes nor depends on the caller's RNG, so the same seed gives
    the same samples (PMC's per-call samples, AltPO's alternate answers)."""
    from ..evaluation.model_io import generate_answers

    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        out = generate_answers(model, fmt, questions, max_new_tokens, batch_size=batch_size or len(questions) * n,
                               do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n)
    return [list(x) if n > 1 else [x] for x in out]  # type: ignore[misc]


# -- the hook -------------------------------------------------------------------------------------

class PMCHook:
    """Online self-generation memory of PMC: `hook(model, indices, forget_rows) -> forget_rows`."""

    def __init__(self, model, fmt: PromptFormatter, questions: Sequence[str], cfg: PMCConfig,
                 sampler: Sampler | None = None, original: Sequence[str] | None = None):
        self.fmt = fmt
        self.cfg = cfg
        self.questions = list(questions)
        self.sampler = sampler or self._generate_samples
        if original is None:
            from ..evaluation.model_io import generate_answers

            original = generate_answers(model, fmt, self.questions, cfg.max_new_tokens, cfg.gen_batch_size)
        if len(original) != len(self.questions):
            raise ValueError("one original answer per question is needed")
        self.original: list[str] = [str(a) for a in original]
        # question lookup by prompt tokens (the prompt part of fmt.encode depends on the question only)
        self._by_prompt: dict[tuple[int, ...], int] = {}
        for i, q in enumerate(self.questions):
            e = fmt.encode(q, "")
            self._by_prompt.setdefault(tuple(e.input_ids[: e.prompt_len]), i)
        self.best_answers: list[str] = list(self.original)
        self.best_scores: list[float] = [float("inf")] * len(self.questions)
        self.calls = 0
        self.samples_drawn = 0
        self.rng = np.random.default_rng([cfg.seed, 0x504D43])

    # sampling: every question and every sample of the batch in one generate call
    def _generate_samples(self, model, questions: Sequence[str], n: int) -> list[list[str]]:
        c = self.cfg
        return sample_answers(model, self.fmt, questions, n, temperature=c.temperature, top_p=c.top_p,
                              max_new_tokens=c.max_new_tokens, seed=[c.seed, self.calls])

    def update(self, model, indices: Sequence[int]) -> None:
        """Sample, score and (maybe) replace the stored answer of every unfinished question in `indices`."""
        active = [i for i in dict.fromkeys(int(i) for i in indices) if self.best_scores[i] > 0]
        if active:
            samples = self.sampler(model, [self.questions[i] for i in active], self.cfg.n_samples)
            for i, cand in zip(active, samples):
                scores = pmc_scores(cand, self.original[i], self.cfg.min_words, self.cfg.length_penalty)
                j = select_least_similar(scores, self.cfg.tau, self.rng)
                if scores[j] <= self.best_scores[i]:
                    self.best_scores[i] = float(scores[j])
                    self.best_answers[i] = cand[j]
                self.samples_drawn += len(cand)
        self.calls += 1

    def question_indices(self, indices: Sequence[int], forget_rows: Sequence[EncodedQA]) -> list[int]:
        """The split index of each row's question, from its prompt tokens only (`indices` when no rows)."""
        if not forget_rows:
            return [int(i) for i in indices]
        out = []
        for r in forget_rows:
            q = self._by_prompt.get(tuple(r.input_ids[: r.prompt_len]))
            if q is None:
                raise ConfigError("pmc: a forget row's question is not among the forget split's questions")
            out.append(q)
        return out

    def __call__(self, model, indices: Sequence[int], forget_rows: Sequence[EncodedQA]) -> list[EncodedQA]:
        qidx = self.question_indices(indices, forget_rows)  # reads prompt tokens only, never the answers
        self.update(model, qidx)
        return [self.fmt.encode(self.questions[i], self.best_answers[i]) for i in qidx]

    @property
    def done(self) -> int:
        """Number of questions whose best score reached 0 (no longer sampled)."""
        return sum(s <= 0 for s in self.best_scores)

    def state_dict(self) -> dict[str, Any]:
        return {"original": list(self.original), "best_answers": list(self.best_answers),
                "best_scores": list(self.best_scores), "calls": self.calls, "samples_drawn": self.samples_drawn,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["original"]) != len(self.questions):
            raise ConfigError(f"pmc: checkpoint holds {len(state['original'])} forget questions, "
                              f"this run has {len(self.questions)}")
        self.original = list(state["original"])
        self.best_answers = list(state["best_answers"])
        self.best_scores = [float(s) for s in state["best_scores"]]
        self.calls = int(state["calls"])
        self.samples_drawn = int(state.get("samples_drawn", 0))
        self.rng.bit_generator.state = state["rng"]


def make_pmc_hook(model, fmt: PromptFormatter, source: str, split: str, params: Mapping[str, Any]) -> PMCHook:
    """The engine's `batch_hook_factory`: reads the forget *questions* only (never the answers)."""
    from ..data import tofu

    questions = [r["question"] for r in tofu.load_split(split, source)]
    if torch.cuda.is_available():  # generate the original answers where training will run
        from accelerate import PartialState

        model.to(PartialState().device)
    return PMCHook(model, fmt, questions, PMCConfig.from_params(params))


# -- the loss -------------------------------------------------------------------------------------

def _retain_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {"alpha": float(params.get("lam", 1.0)), "retain_loss": params.get("retain_loss", "nll")}


def _needs(params: Mapping[str, Any]) -> frozenset[str]:
    return retain_needs(_retain_params(params)) | {"self_generated"}


def pmc_loss(nll_self: torch.Tensor, retain: torch.Tensor) -> torch.Tensor:
    """`NLL(selected self-generations) + retain` (retain already weighted by lam)."""
    return nll_self + retain


@register_method("pmc", needs=_needs, batch_hook_factory=make_pmc_hook)
def pmc(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """PMC: NLL on the model's own least-similar samples + lam * NLL on retain (partial model collapse)."""
    return pmc_loss(inputs.forget.nll, retain_term(inputs, _retain_params(params)))
