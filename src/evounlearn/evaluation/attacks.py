"""Leakage attacks on any model (the two of PMC's paper): does the forgotten answer still
come out when one asks differently than greedy decoding?

- **Sampling attack**: `samples` answers per forget question at `temperature` (top-p `top_p`), all
  in one batched generate call; per question the *best* ROUGE-L recall (stemming) of any sample vs
  the ground truth; the aggregate is the mean over questions.
- **Prefilling attack**: greedy answers generated after the answer is started with `prefix`
  ("The answer is:", appended to the prompt through `PromptFormatter.prompt_text(prefill=...)`);
  ROUGE-L recall of the generated continuation (the prefix itself is not scored) vs the ground truth.

Both return the project's metric entry: `{"agg": mean, "values": {"0": v, ...}, "generations": [...]}`
(for the sampling attack `generations` holds each question's best sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.prompting import PromptFormatter
from ..errors import ConfigError
from .metrics import rouge_l_recall
from .model_io import generate_answers

ATTACKS = ("sampling", "prefill")
PREFILL_PREFIX = "The answer is:"


@dataclass
class AttackConfig:
    samples: int = 16  # k samples per question (sampling attack)
    temperature: float = 1.0
    top_p: float = 1.0
    prefix: str = PREFILL_PREFIX
    max_new_tokens: int = 200
    batch_size: int = 64  # prompts x samples per generate call
    seed: int = 0


def _entry(values: np.ndarray, generations: Sequence[str], **extra: Any) -> dict[str, Any]:
    return {"agg": float(np.mean(values)) if len(values) else None,
            "values": {str(i): float(v) for i, v in enumerate(values)}, "generations": list(generations), **extra}


def sampling_attack(model, fmt: PromptFormatter, questions: Sequence[str], answers: Sequence[str],
                    cfg: AttackConfig | None = None) -> dict[str, Any]:
    """Best-of-k ROUGE-L recall vs the ground truth over k sampled answers per question."""
    cfg = cfg or AttackConfig()
    k = int(cfg.samples)
    if k < 1 or cfg.temperature <= 0:
        raise ConfigError(f"sampling attack: need samples >= 1 and temperature > 0 (got {k}, {cfg.temperature})")
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        gens = generate_answers(model, fmt, questions, cfg.max_new_tokens, batch_size=max(cfg.batch_size, k),
                                do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                num_return_sequences=k)
    per_q = [list(g) if k > 1 else [g] for g in gens]
    flat = rouge_l_recall([s for g in per_q for s in g], [a for a in answers for _ in range(k)])
    scores = flat.reshape(len(questions), k) if len(questions) else np.zeros((0, k))
    best = scores.max(axis=1) if len(questions) else np.zeros(0)
    best_text = [g[int(j)] for g, j in zip(per_q, scores.argmax(axis=1))] if len(questions) else []
    return _entry(best, best_text, samples=k, temperature=cfg.temperature, top_p=cfg.top_p,
                  mean_sample_rouge=float(scores.mean()) if scores.size else None)


def prefill_attack(model, fmt: PromptFormatter, questions: Sequence[str], answers: Sequence[str],
                   cfg: AttackConfig | None = None) -> dict[str, Any]:
    """ROUGE-L recall vs the ground truth of greedy answers started with `cfg.prefix`."""
    cfg = cfg or AttackConfig()
    gens = generate_answers(model, fmt, questions, cfg.max_new_tokens, cfg.batch_size, prefill=cfg.prefix)
    return _entry(rouge_l_recall(gens, answers), gens, prefix=cfg.prefix)  # type: ignore[arg-type]


def parse_attacks(text: str | Sequence[str] | None) -> list[str]:
    """'sampling,prefill' -> ['sampling', 'prefill']; unknown names are a ConfigError."""
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [s.strip().lower() for s in items if s.strip()]
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown:
        raise ConfigError(f"unknown attack(s) {', '.join(unknown)} (known: {', '.join(ATTACKS)})")
    return list(dict.fromkeys(names))


def run_attacks(model, fmt: PromptFormatter, rows: Sequence[dict[str, Any]], attacks: Sequence[str] = ATTACKS,
                cfg: AttackConfig | None = None) -> dict[str, dict[str, Any]]:
    """The chosen attacks on forget `rows` (question, answer): {"sampling_attack_rouge": ..., ...}."""
    cfg = cfg or AttackConfig()
    qs = [r["question"] for r in rows]
    ans = [r["answer"] for r in rows]
    out: dict[str, dict[str, Any]] = {}
    for name in parse_attacks(list(attacks)):
        fn = sampling_attack if name == "sampling" else prefill_attack
        out[f"{name}_attack_rouge"] = fn(model, fmt, qs, ans, cfg)
    return out


def add_attacks(results: dict[str, Any], model, fmt: PromptFormatter, rows: Sequence[dict[str, Any]],
                attacks: Sequence[str] = ATTACKS, cfg: AttackConfig | None = None) -> dict[str, Any]:
    """Run the attacks and store them in `results["metrics"]` and `results["summary"]` (in place)."""
    res = run_attacks(model, fmt, rows, attacks, cfg)
    results.setdefault("metrics", {}).update(res)
    results.setdefault("summary", {}).update({k: v["agg"] for k, v in res.items()})
    return results
