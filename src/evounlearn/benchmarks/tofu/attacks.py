"""Recovery attacks (`evounlearn.attacks`) on a TOFU-shaped benchmark's models: the evaluator that
scores an attacked model (the TOFU suite on the rows the attack leaves to score, against the retain
oracle's results), the prepared target's results as the recovery's "target" and the prepared
retain oracle as its floor. Used by `run_unlearning` (a run's `attacks.names`, what the `robust`
fitness reads) and by `evounlearn eval --attacks`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ...attacks.config import AttacksConfig


def run_tofu_attacks(model: Any, tok: Any, fmt: Any, names: Sequence[str], *, source: str, split: str,
                     part: Sequence[int] | None, eval_cfg: Any, clean: Mapping[str, Any],
                     retain_results: Mapping[str, Any] | None, target_results: Mapping[str, Any] | None,
                     oracle_path: str | None = None, cfg: AttacksConfig | None = None,
                     cache_root: str | None = None) -> dict[str, dict[str, Any]]:
    """`attacks.suite.run_attacks` with the TOFU evaluator; `clean` = the model's own results on
    `part`; `retain_results` (the oracle's saved results) both score forget quality and, with
    `oracle_path`, are the oracle's clean values for the floor."""
    from ...attacks.suite import run_attacks, tofu_attack_data
    from ...evaluation.tofu_eval import TofuEvaluator
    from ...files import content_hash

    data = tofu_attack_data(source, split, part)
    if hasattr(model, "merge_and_unload"):  # a LoRA run: attack the merged weights (bitsandbytes
        import copy  # quantizes the base weights; the adapter is part of the model that is released)

        model = copy.deepcopy(model).merge_and_unload()

    metrics = [n.strip() for n in (cfg.metrics if cfg else "").split(",") if n.strip()] or None

    def evaluate(m: Any, rows: list[int]) -> dict[str, Any]:
        m.eval()
        ev = TofuEvaluator(source, split, eval_cfg, forget_indices=rows, metrics=metrics)
        return ev.evaluate(m, tok, retain_results=dict(retain_results) if retain_results else None, fmt=fmt)

    rr = (retain_results or {}).get("metrics", {}).get("forget_truth_ratio", {}).get("values")
    eval_key = content_hash({"source": source, "split": split, "eval": dataclasses.asdict(eval_cfg),
                             "max_length": getattr(fmt, "max_length", None), "retain": rr,
                             "metrics": metrics}, n=24)
    oracle = None
    if oracle_path:
        from ...models.loading import load_model_and_tokenizer

        oracle = load_model_and_tokenizer(oracle_path)[0]
        oracle.eval()
    return run_attacks(model, fmt, list(names), data, evaluate, clean, cfg=cfg, target=target_results,
                       oracle=oracle, oracle_results=retain_results if oracle is not None else None,
                       eval_key=eval_key, cache_root=cache_root)
