"""Batched model calls shared by every evaluator: teacher-forced scoring and greedy generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.prompting import PromptFormatter
from ..models.scoring import shift, token_logprobs
from .metrics import min_k_plus_plus_z


@dataclass(frozen=True)
class TokenStats:
    """Teacher-forced statistics of one token set of one answer, one entry per predicted token."""

    logps: np.ndarray  # [n] log p(label_t)
    hits: np.ndarray  # [n] bool, argmax == label
    labels: np.ndarray  # [n] label ids
    z: np.ndarray | None = None  # [n] Min-K%++ standardised log p (metrics.min_k_plus_plus_z)

    def __len__(self) -> int:
        return len(self.logps)

    def head(self, n: int) -> TokenStats:
        """The first `n` positions."""
        return TokenStats(self.logps[:n], self.hits[:n], self.labels[:n], None if self.z is None else self.z[:n])

    @property
    def avg_nll(self) -> float:
        return float(-self.logps.mean()) if len(self.logps) else 0.0

    @property
    def predictions(self) -> np.ndarray:
        """Teacher-forced argmax ids where known: the label on a hit, -1 (never a label) elsewhere."""
        return np.where(self.hits, self.labels, -1)


@dataclass(frozen=True)
class ScoredAnswer:
    """One answer scored given its question, with the two token sets the metrics use.

    The token-set rule lives here and nowhere else:
    - `with_eos`: the answer tokens and the closing EOS prediction (every labelled position).
      Prob, truth ratio, the LOSS, zlib and reference-model attacks (open-unlearning's
      `evaluate_probability`).
    - `answer`: the answer tokens without the EOS prediction. ES, EM, Min-K% and Min-K%++
      (open-unlearning's `tokenwise_logprobs` / `tokenwise_vocab_logprobs` drop it).
    An answer cut at the formatter's max_length has no EOS; both sets are then the same (the
    reference would drop its last answer token instead).
    """

    with_eos: TokenStats
    ends_with_eos: bool

    @property
    def answer(self) -> TokenStats:
        n = len(self.with_eos)
        return self.with_eos.head(n - 1) if self.ends_with_eos and n else self.with_eos

    @property
    def avg_nll(self) -> float:
        """Mean NLL over answer tokens + EOS (the length-normalised probability's exponent)."""
        return self.with_eos.avg_nll


def _batches(order: Sequence[int], size: int):
    for i in range(0, len(order), size):
        yield order[i : i + size]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


@torch.no_grad()
def score_answers(
    model,
    fmt: PromptFormatter,
    questions: Sequence[str],
    answers: Sequence[str],
    batch_size: int = 64,
    with_distribution_stats: bool = False,
) -> list[ScoredAnswer]:
    """Score `answers[i]` given `questions[i]`; batches are length-sorted to waste little padding.

    `with_distribution_stats` also computes the Min-K%++ standardised log-probs (`TokenStats.z`).
    """
    encoded = [fmt.encode(q, a) for q, a in zip(questions, answers)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].input_ids))
    out: list[ScoredAnswer | None] = [None] * len(encoded)
    device = next(model.parameters()).device
    for idx in _batches(order, batch_size):
        batch = {k: v.to(device) for k, v in fmt.collate([encoded[i] for i in idx]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        lg, lb = shift(logits, batch["labels"])
        logp, mask = token_logprobs(lg, lb)
        hits = (lg.argmax(-1) == lb) & mask
        z = None
        if with_distribution_stats:  # only the scored positions: [N, V], not [B, T, V]
            z = torch.zeros_like(logp)
            z[mask] = min_k_plus_plus_z(lg[mask], lb[mask])
        for row, i in enumerate(idx):
            m = mask[row]
            stats = TokenStats(
                logps=_np(logp[row][m]),
                hits=hits[row][m].cpu().numpy(),
                labels=lb[row][m].cpu().numpy(),
                z=None if z is None else _np(z[row][m]),
            )
            labels = encoded[i].labels
            out[i] = ScoredAnswer(with_eos=stats, ends_with_eos=bool(labels) and labels[-1] == fmt.eos_id)
    return out  # type: ignore[return-value]


@torch.no_grad()
def generate_answers(
    model,
    fmt: PromptFormatter,
    questions: Sequence[str],
    max_new_tokens: int = 200,
    batch_size: int = 64,
    prefill: str = "",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int | None = None,
) -> list[list[str]] | list[str]:
    """Batched generation with KV cache and left padding. Greedy by default.

    Returns one string per question, or a list of `num_return_sequences` strings per question.
    """
    prompts = [fmt.prompt_ids(q, prefill=prefill) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list = [None] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    if seed is not None:
        torch.manual_seed(seed)
    for idx in _batches(order, max(1, batch_size // max(1, num_return_sequences))):
        batch = {k: v.to(device) for k, v in fmt.collate_prompts([prompts[i] for i in idx]).items()}
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=num_return_sequences,
            pad_token_id=fmt.pad_id,
            eos_token_id=fmt.eos_id,
            use_cache=True,
        )
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        gen = model.generate(**batch, **kwargs)
        new = gen[:, batch["input_ids"].shape[1] :]
        texts = fmt.tokenizer.batch_decode(new, skip_special_tokens=True)
        texts = [t.strip() for t in texts]
        for row, i in enumerate(idx):
            chunk = texts[row * num_return_sequences : (row + 1) * num_return_sequences]
            results[i] = chunk if num_return_sequences > 1 else chunk[0]
    if was_training:
        model.train()
    return results


def gradnorm_scores(model, fmt: PromptFormatter, questions: Sequence[str], answers: Sequence[str],
                    p: float = 2.0) -> np.ndarray:
    """GradNorm MIA scores (`metrics.grad_norm`), one backward pass per example: the gradient of
    the example's mean answer NLL (answer tokens without the EOS prediction, open-unlearning's
    `tokenwise_logprobs` token set) with respect to every parameter tensor. The model stays in its
    mode (eval: no dropout; open-unlearning's newest version switches to train mode) and its
    `.grad` fields are not touched (`torch.autograd.grad`); parameters that do not require
    gradients are switched on for the call and back off after."""
    from ..data.prompting import IGNORE_INDEX
    from .metrics import grad_norm

    if len(questions) != len(answers):
        raise ValueError("one answer per question is needed")
    params = list(model.parameters())
    frozen = [q for q in params if not q.requires_grad]
    device = next(model.parameters()).device
    out = np.zeros(len(questions))
    try:
        for q in frozen:
            q.requires_grad_(True)
        for i, (question, answer) in enumerate(zip(questions, answers)):
            enc = fmt.encode(question, answer)
            labels = list(enc.labels)
            if len(labels) - enc.prompt_len > 1 and labels[-1] == fmt.eos_id:
                labels[-1] = IGNORE_INDEX  # the answer tokens without the EOS prediction
            ids = torch.tensor([enc.input_ids], device=device)
            with torch.enable_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
                lp, mask = token_logprobs(*shift(logits, torch.tensor([labels], device=device)))
                loss = -(lp * mask).sum() / mask.sum().clamp(min=1)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            out[i] = grad_norm(grads, p)
    finally:
        for q in frozen:
            q.requires_grad_(False)
    return out
