"""The TOFU benchmarks' command-line machinery (`TofuBenchmark.cli_*`): `PrepareConfig` files for
`prepare`, the full TOFU suite (with leakage attacks) on any model for `eval`, and resumable,
reproducible run directories (`build_config` / `run_unlearning`) for `unlearn`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .runs import EvalRequest, Report

TOFU_TABLE_KEYS = (
    "forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio",
    "extraction_strength", "exact_memorization", "privleak", "mia_loss", "mia_zlib", "mia_min_k",
    "mia_min_k_plus_plus", "retain_rouge", "retain_prob", "retain_truth_ratio",
    "real_authors_rouge", "real_authors_prob", "real_authors_truth_ratio",
    "world_facts_rouge", "world_facts_prob", "world_facts_truth_ratio",
)
COMPARE_KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "privleak",
                "extraction_strength", "seconds")


def cli_prepare(config: str | None, overrides: list[str], force: bool = False) -> Report:
    from ..config import load_config
    from .tofu import PrepareConfig, prepare, summaries

    cfg = load_config(PrepareConfig, config, overrides)
    p = prepare(cfg, force=force)
    return Report(summaries(p), TOFU_TABLE_KEYS,
                  [f"target: {p.target}", f"retain: {p.retain}", f"results: {p.target_results}, {p.retain_results}"])


def cli_eval(req: EvalRequest) -> Report:
    """The full TOFU suite on `req.model` (or the prepared target and oracle), retain first."""
    from ..config import load_config
    from ..evaluation.attacks import parse_attacks
    from ..evaluation.tofu_eval import TofuEvaluator, load_results, save_results
    from ..models.loading import load_model_and_tokenizer
    from .tofu import PrepareConfig, prepare, resolve_data

    cfg = load_config(PrepareConfig, req.config, req.overrides)
    models: dict[str, tuple[str, str | None]] = {}
    retain_results = load_results(req.retain_results) if req.retain_results else None
    if req.model:
        models[Path(req.model).name] = (req.model, req.adapter)
        source = resolve_data(cfg)
    else:  # default: the prepared target and retain oracle of the benchmark
        p = prepare(cfg)
        source = p.data
        models = {"target": (str(p.target), None), "retain": (str(p.retain), None)}
    ev = TofuEvaluator(source, cfg.forget_split, cfg.eval)
    reference = load_model_and_tokenizer(req.reference_model)[0] if req.reference_model else None
    attacks = parse_attacks(req.attacks)
    summaries: dict[str, dict[str, Any]] = {}
    lines: list[str] = []
    for name in sorted(models, key=lambda n: n != "retain"):
        path, adapter = models[name]
        model, tok = load_model_and_tokenizer(path, adapter=adapter)
        ref_res = retain_results
        if name == "retain" and ref_res is None:
            ref_res = ev.evaluate(model, tok)
        res = ev.evaluate(model, tok, retain_results=ref_res, reference_model=reference)
        if attacks:  # leakage attacks on the forget split (evaluation/attacks.py)
            from ..data.prompting import PromptFormatter
            from ..evaluation.attacks import AttackConfig, add_attacks

            add_attacks(res, model, PromptFormatter(tok), ev.forget, attacks, AttackConfig(
                samples=req.attack_samples, temperature=req.attack_temperature,
                max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size))
        if name == "retain":
            retain_results = res
        res["model"] = path
        summaries[name] = res["summary"]
        if req.out:
            save_results(res, Path(req.out) / f"{name}_results.json")
            lines.append(f"saved {Path(req.out) / f'{name}_results.json'}")
    return Report(summaries, TOFU_TABLE_KEYS + tuple(f"{a}_attack_rouge" for a in attacks), lines)


def cli_unlearn(method: str | None, config: str | None, overrides: list[str], *, resume: str | None = None) -> Report:
    from .tofu import build_config, prepare, resume_config, run_unlearning, summaries

    cfg = resume_config(resume) if resume else build_config(method, config, overrides)
    record = run_unlearning(cfg, resume=bool(resume))
    table: dict[str, dict[str, Any]] = {}
    if not cfg.model:
        table.update(summaries(prepare(cfg.prepare)))
    table[cfg.method] = {**record.get("summary", {}), "seconds": record["seconds"]}
    return Report(table, COMPARE_KEYS, [], cfg.run_dir)
