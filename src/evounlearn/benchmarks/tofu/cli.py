"""The TOFU benchmarks' command-line machinery (`TofuBenchmark.cli_*`): `PrepareConfig` files for
`prepare`, the full TOFU suite (with leakage attacks) on any model for `eval`, and resumable,
reproducible run directories (`build_config` / `run_unlearning`) for `unlearn`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..runs import EvalRequest, Report

TOFU_TABLE_KEYS = (
    "forget_quality", "model_utility", "forget_rouge", "forget_prob", "forget_truth_ratio",
    "extraction_strength", "exact_memorization", "privleak", "mia_loss", "mia_zlib", "mia_min_k",
    "mia_min_k_plus_plus", "mia_gradnorm", "retain_rouge", "retain_prob", "retain_truth_ratio",
    "real_authors_rouge", "real_authors_prob", "real_authors_truth_ratio",
    "world_facts_rouge", "world_facts_prob", "world_facts_truth_ratio",
)
COMPARE_KEYS = ("forget_quality", "model_utility", "forget_rouge", "forget_prob", "privleak",
                "extraction_strength", "seconds")


def cli_prepare(config: str | None, overrides: list[str], force: bool = False, *,
                export: str | None = None, import_from: str | None = None) -> Report:
    """Prepare (cached), or install a prepared artifact (`import_from`), and report both models;
    `export` then writes the prepared entry to an artifact file."""
    from ...config import load_config
    from .artifact import export_prepared, import_prepared, models_sha256
    from .build import check_tofu_data, prepare, summaries
    from .config import PrepareConfig

    if export and import_from:
        raise ConfigError("--export and --import: one at a time (import, then export from the cache)")
    cfg = load_config(PrepareConfig, config, overrides)
    check_tofu_data(cfg.data, cfg.forget_split)  # before anything is trained
    lines, wrote = [], False
    if import_from:
        p, manifest, wrote = import_prepared(cfg, import_from, force=force)
        lines.append(f"imported {import_from}" if wrote else f"the cache already holds {import_from}'s models")
    elif export:
        if force:
            prepare(cfg, force=True)
        p, manifest = export_prepared(cfg, export)
        lines.append(f"exported to {export} ({Path(export).stat().st_size / 1e6:.1f} MB)")
    else:
        p = prepare(cfg, force=force)
    sha = models_sha256(p.target, p.retain)
    lines += [f"target: {p.target}", f"retain: {p.retain}", f"results: {p.target_results}, {p.retain_results}",
              f"models sha256: {sha}"]
    return Report(summaries(p), TOFU_TABLE_KEYS, lines, info={"models_sha256": sha, "imported": wrote})


def model_label(model: str, adapter: str | None) -> str:
    """How `eval` names a model: an adapter by its run (RUN/adapter -> RUN), else the model folder."""
    if adapter:
        a = Path(adapter)
        return a.parent.name if a.name in ("adapter", "model") else a.name
    return Path(model).name


@dataclass
class RunEval:
    """What `evounlearn eval RUN_DIR` takes from an unlearning run: its model (or adapter on its
    base model), its oracle's results, and the part of the forget split it was scored on."""

    model: str
    adapter: str | None
    retain_results: str
    forget_part: str
    search_fraction: float
    prepared_target: bool = True  # the run unlearned the prepared target (so its oracle is the prepared one)


def run_eval_config(run_dir: str, overrides: list[str]) -> tuple[Any, RunEval]:
    """(the PrepareConfig, RunEval) of an `unlearn` run directory: the run's data, split,
    evaluation settings and prepared models, then the eval's own key=value overrides."""

    from ...config import apply_overrides, load_yaml, parse_overrides
    from .config import UnlearnConfig

    rd = Path(run_dir)
    path = rd / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not an unlearning run directory (no config.yaml)")
    data = load_yaml(path)
    if "prepare" not in data:
        other = (f" (a {data['benchmark']} run: its results.json holds its evaluation)"
                 if data.get("benchmark") else "")
        raise ConfigError(f"{path} is not the config of a TOFU-shaped unlearning run{other}")
    ucfg = UnlearnConfig()
    apply_overrides(ucfg, data)
    cfg = ucfg.prepare
    cfg.data, cfg.forget_split, cfg.eval = ucfg.data, ucfg.forget_split, ucfg.eval
    apply_overrides(cfg, parse_overrides(overrides))
    if (rd / "adapter").is_dir():
        model, adapter = ucfg.model or "", str(rd / "adapter")
    elif (rd / "model").is_dir():
        model, adapter = str(rd / "model"), None
    else:
        raise ConfigError(f"{run_dir} holds no model (no model/ or adapter/ folder: the run did not finish, "
                          f"or its model was not kept)")
    return cfg, RunEval(model, adapter, ucfg.retain_results, ucfg.forget_part, ucfg.search_fraction,
                        prepared_target=not ucfg.model)


def cli_eval(req: EvalRequest) -> Report:
    """The full TOFU suite on `req.model`, a run directory's model, or the prepared target and
    oracle. The oracle is evaluated first (the target's forget quality needs it); the table shows
    the target first. A given model is scored against the prepared oracle's results when they are
    in the cache (or `--retain-results`)."""
    import os
    import sys

    from ...config import load_config
    from ...models.source import check_model_source
    from .build import check_tofu_data
    from .config import PrepareConfig

    run: RunEval | None = None
    if req.run_dir:
        cfg, run = run_eval_config(req.run_dir, req.overrides)
        if req.config:
            raise ConfigError("a run directory brings its own config: give key=value overrides, not --config")
    else:
        cfg = load_config(PrepareConfig, req.config, req.overrides)
    from ...attacks import split_attacks

    model_attacks, attacks = split_attacks(req.attacks)  # unknown names fail here, before any model
    acfg = _attacks_config(model_attacks, req.attack_options)
    if req.adapter and not Path(req.adapter).is_dir():
        raise ConfigError(f"adapter folder {req.adapter} does not exist")
    if req.retain_results and not Path(req.retain_results).is_file():
        raise ConfigError(f"retain results file {req.retain_results} does not exist")
    check_tofu_data(cfg.data, cfg.forget_split)  # before any model is loaded
    if req.model:
        check_model_source(req.model)  # a missing folder or an unreachable Hub id: one line, nothing written
    if req.reference_model:
        check_model_source(req.reference_model, "--reference-model")
    if run is not None and run.model:
        check_model_source(run.model, "the run's model")
    what = (f"the model of {req.run_dir}" if req.run_dir else req.model or "the prepared target and retain oracle")
    if os.environ.get("RANK", "0") in ("", "0"):  # the main process of an `accelerate launch` only
        print(f"eval: {what} on {cfg.forget_split} of {cfg.data} (loading; the table follows)", file=sys.stderr,
              flush=True)
    return _evaluate(req, cfg, attacks, run, model_attacks, acfg)


def _attacks_config(names: list[str], options: list[str]) -> Any:
    """The recovery attacks' options (`AttacksConfig`; the eval command attacks the retain oracle
    too, for the floor), every attack's options checked."""
    from ...attacks import attack_options
    from ...attacks.config import AttacksConfig
    from ...config import apply_overrides, parse_overrides

    acfg = apply_overrides(AttacksConfig(oracle=True), parse_overrides(list(options or [])))
    if options and not names:
        raise ConfigError("--attack-option needs recovery attacks in --attacks")
    for name in names:
        attack_options(name, acfg)
    return acfg


def _evaluate(req: EvalRequest, cfg: Any, attacks: list[str], run: RunEval | None = None,
              model_attacks: list[str] | None = None, acfg: Any = None) -> Report:
    from ...evaluation.tofu_eval import TofuEvaluator, load_results, save_results
    from ...models.loading import load_model_and_tokenizer
    from ..base import default_cache_dir
    from .build import cached_prepared, prepare

    model_attacks = list(model_attacks or [])
    models: dict[str, tuple[str, str | None]] = {}
    lines: list[str] = []
    retain_path = req.retain_results or (run.retain_results if run else "")
    forget_indices = None
    target_results_path, oracle_path = "", ""
    if req.model or run is not None:
        if run is not None:
            model, adapter = run.model, run.adapter
            if not model:  # a LoRA run on the prepared target
                model = str(prepare(cfg).target)
            name = Path(req.run_dir or "run").resolve().name
        else:
            model, adapter = str(req.model), req.adapter
            name = model_label(model, adapter)
        models[name] = (model, adapter)
        # the prepared oracle of these data, when cached (a run of another base model: only its own)
        look = not retain_path and (run is None or run.prepared_target)
        found = cached_prepared(cfg) if look else None
        source = found.data if found else _source(cfg)
        if found is not None:
            retain_path = str(found.retain_results)
            target_results_path, oracle_path = str(found.target_results), str(found.retain)
        if retain_path:
            lines.append(f"forget quality and PrivLeak against the retain oracle's results: {retain_path}")
        else:
            lines.append("no retain oracle in the cache for these data (run `evounlearn prepare` with the same "
                         "options, or pass --retain-results): forget quality and PrivLeak are not computed")
        if run is not None:
            forget_indices = _part_indices(source, cfg.forget_split, run)
            lines.append(f"data: the whole {cfg.forget_split} split (the run's forget_part=all)" if forget_indices
                         is None else f"data: the {run.forget_part} part of {cfg.forget_split} "
                         f"({len(forget_indices)} questions; the run's forget_part)")
        else:
            lines.append(f"data: the whole {cfg.forget_split} split")
    else:  # default: the prepared target and retain oracle of the benchmark
        p = prepare(cfg)
        source = p.data
        models = {"target": (str(p.target), None), "retain": (str(p.retain), None)}
        target_results_path, oracle_path = str(p.target_results), str(p.retain)
        lines.append(f"data: the whole {cfg.forget_split} split")
    retain_results = load_results(retain_path) if retain_path else None
    ev = TofuEvaluator(source, cfg.forget_split, cfg.eval, forget_indices=forget_indices)
    reference = load_model_and_tokenizer(req.reference_model)[0] if req.reference_model else None
    summaries: dict[str, dict[str, Any]] = {}
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
        if model_attacks:  # recovery attacks (attacks/): the attacked copies scored like the model
            from ...attacks.suite import flat_summary
            from ...data.prompting import PromptFormatter
            from ...evaluation.tofu_eval import load_results as _load
            from .attacks import run_tofu_attacks

            res["attacks"] = run_tofu_attacks(
                model, tok, PromptFormatter(tok), model_attacks, source=source, split=cfg.forget_split,
                part=forget_indices, eval_cfg=cfg.eval, clean=res, retain_results=ref_res,
                target_results=_load(target_results_path) if target_results_path else None,
                oracle_path=(oracle_path or None) if acfg.oracle and name != "retain" else None, cfg=acfg,
                cache_root=str(cfg.cache_dir or default_cache_dir()))
            res["summary"].update(flat_summary(res["attacks"]))
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
    recovery_cols = tuple(f"{k}@{a}" for a in model_attacks or () for k in ("recovery", "oracle_floor", "model_utility"))
    return Report({n: summaries[n] for n in order}, TOFU_TABLE_KEYS + tuple(f"{a}_attack_rouge" for a in attacks)
                  + recovery_cols, lines)


def _source(cfg: Any) -> str:
    from .build import resolve_data

    return resolve_data(cfg)


def _part_indices(source: str, split: str, run: RunEval) -> list[int] | None:
    """The forget rows the run was scored on (None: all of them)."""
    if run.forget_part == "all":
        return None
    from ...data import tofu
    from ..parts import forget_part_indices
    from .unlearn import _group

    n = len(tofu.load_split(split, source))
    return forget_part_indices(n, run.forget_part, run.search_fraction, group=_group(source, split))


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
        if light.model:
            from ...models.source import check_model_source

            check_model_source(light.model)  # one line, before any cache write or run directory
        cfg = build_config(method, config, overrides)
    cfg.run_dir = cfg.run_dir or str(default_run_dir(cfg))
    with guard_run_dir(cfg.run_dir):
        record = run_unlearning(cfg, resume=bool(resume))
    table: dict[str, dict[str, Any]] = {}
    if not cfg.model:
        table.update(summaries(prepare(cfg.prepare)))
    table[cfg.method] = {**record.get("summary", {}), "seconds": record["seconds"]}
    part = (f"the whole {cfg.forget_split} split" if cfg.forget_part == "all"
            else f"the {cfg.forget_part} part of {cfg.forget_split} (forget_part={cfg.forget_part})")
    return Report(table, COMPARE_KEYS, [f"unlearned and evaluated on {part}"], cfg.run_dir)
