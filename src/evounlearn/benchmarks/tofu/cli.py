"""The TOFU benchmarks' command-line machinery (`TofuBenchmark.cli_*`): `PrepareConfig` files for
`prepare`, the full TOFU suite (with leakage attacks) on any model for `eval`, and resumable,
reproducible run directories (`build_config` / `run_unlearning`) for `unlearn`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..runs import EvalRequest, Report

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
    from ...config import load_config
    from .build import check_tofu_data, prepare, summaries
    from .config import PrepareConfig

    cfg = load_config(PrepareConfig, config, overrides)
    check_tofu_data(cfg.data, cfg.forget_split)  # before anything is trained
    p = prepare(cfg, force=force)
    return Report(summaries(p), TOFU_TABLE_KEYS,
                  [f"target: {p.target}", f"retain: {p.retain}", f"results: {p.target_results}, {p.retain_results}"])


def model_label(model: str, adapter: str | None) -> str:
    """How `eval` names a model: an adapter by its run (RUN/adapter -> RUN), else the model folder."""
    if adapter:
        a = Path(adapter)
        return a.parent.name if a.name in ("adapter", "model") else a.name
    return Path(model).name


def cli_eval(req: EvalRequest) -> Report:
    """The full TOFU suite on `req.model` (or the prepared target and oracle). The oracle is
    evaluated first (the target's forget quality needs it); the table shows the target first."""
    from ...config import load_config
    from .build import check_tofu_data
    from .config import PrepareConfig

    cfg = load_config(PrepareConfig, req.config, req.overrides)
    attacks: list[str] = []
    if req.attacks:
        from ...evaluation.attacks import parse_attacks

        attacks = parse_attacks(req.attacks)
    if req.adapter and not Path(req.adapter).is_dir():
        raise ConfigError(f"adapter folder {req.adapter} does not exist")
    if req.retain_results and not Path(req.retain_results).is_file():
        raise ConfigError(f"retain results file {req.retain_results} does not exist")
    check_tofu_data(cfg.data, cfg.forget_split)  # before any model is loaded
    return _evaluate(req, cfg, attacks)


def _evaluate(req: EvalRequest, cfg: Any, attacks: list[str]) -> Report:
    from ...evaluation.tofu_eval import TofuEvaluator, load_results, save_results
    from ...models.loading import load_model_and_tokenizer
    from .build import prepare, resolve_data

    models: dict[str, tuple[str, str | None]] = {}
    retain_results = load_results(req.retain_results) if req.retain_results else None
    if req.model:
        models[model_label(req.model, req.adapter)] = (req.model, req.adapter)
        source = resolve_data(cfg)
    else:  # default: the prepared target and retain oracle of the benchmark
        p = prepare(cfg)
        source = p.data
        models = {"target": (str(p.target), None), "retain": (str(p.retain), None)}
    ev = TofuEvaluator(source, cfg.forget_split, cfg.eval)
    reference = load_model_and_tokenizer(req.reference_model)[0] if req.reference_model else None
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
            from ...data.prompting import PromptFormatter
            from ...evaluation.attacks import AttackConfig, add_attacks

            add_attacks(res, model, PromptFormatter(tok), ev.forget, attacks, AttackConfig(
                samples=req.attack_samples, temperature=req.attack_temperature,
                max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size))
        if name == "retain":
            retain_results = res
        res["model"] = path
        if adapter:
            res["adapter"] = adapter
        summaries[name] = res["summary"]
        if req.out:
            out = Path(req.out) / f"{name}_results.json"
            save_results(res, out)
            lines.append(f"wrote {name}'s results: {out}")
    if not req.out:
        lines.append("results not saved (add --out DIR to write them as JSON)")
    order = sorted(summaries, key=lambda n: n == "retain")  # target (or the model) first, as prepare
    return Report({n: summaries[n] for n in order}, TOFU_TABLE_KEYS + tuple(f"{a}_attack_rouge" for a in attacks),
                  lines)


def cli_unlearn(method: str | None, config: str | None, overrides: list[str], *, resume: str | None = None) -> Report:
    from ..runs import finished_run_report, guard_run_dir
    from .build import check_tofu_data, prepare, summaries
    from .unlearn import build_config, check_config, default_run_dir, resume_config, run_unlearning

    if resume:
        done = finished_run_report(resume, COMPARE_KEYS)
        if done is not None:  # a finished run: report it, change nothing
            return done
        cfg = resume_config(resume)
        check_tofu_data(cfg.data, cfg.forget_split)
    else:
        light, _ = check_config(method, config, overrides)  # every option, before importing torch
        check_tofu_data(light.data, light.forget_split)  # every split, before loading a model
        cfg = build_config(method, config, overrides)
    cfg.run_dir = cfg.run_dir or str(default_run_dir(cfg))
    with guard_run_dir(cfg.run_dir):
        record = run_unlearning(cfg, resume=bool(resume))
    table: dict[str, dict[str, Any]] = {}
    if not cfg.model:
        table.update(summaries(prepare(cfg.prepare)))
    table[cfg.method] = {**record.get("summary", {}), "seconds": record["seconds"]}
    return Report(table, COMPARE_KEYS, [], cfg.run_dir)
