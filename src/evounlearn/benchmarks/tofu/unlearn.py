"""TOFU-shaped benchmarks, unlearning runs (`evounlearn unlearn`): one method on one forget split
(or one part of it), evaluated against the retain oracle, with everything needed to re-run it:

    RUN_DIR/config.yaml    the full config (method, loss params, training options, data)
    RUN_DIR/train.json     loss history, timings, evaluations during training
    RUN_DIR/results.json   the full evaluation (per-example values) + summary
    RUN_DIR/model/         the unlearned model (or adapter/ for LoRA runs)
    RUN_DIR/checkpoint/    the last good training state (for --resume)
"""


from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import apply_overrides, load_yaml, parse_overrides, save_config, to_dict
from ...data import tofu
from ...errors import ConfigError
from ...files import atomic_dir, atomic_write_text
from ...methods import get_method
from ...training.resolve import check_loss_params, configure, layered
from .build import prepare, resolve_data
from .config import UnlearnConfig

# torch, transformers and the evaluation stack are imported inside the functions that use them:
# the command line imports this module to check a command's options and data in well under a
# second, before anything heavy is loaded.
if TYPE_CHECKING:
    from ...data.prompting import PromptFormatter
    from ...training.loop import UnlearnData
    from ...training.resolve import MethodRun
from ..base import default_cache_dir
from ..parts import forget_part_indices


def build_config(method: str | None, config_path: str | None, overrides: list[str]) -> UnlearnConfig:
    """Defaults <- the method's YAML defaults <- the user's YAML file <- key=value overrides."""
    cfg, explicit = check_config(method, config_path, overrides)
    configure(get_method(cfg.method), cfg, explicit)  # e.g. `evolved` reads and checks its loss program
    return cfg


def check_config(method: str | None, config_path: str | None,
                 overrides: list[str]) -> tuple[UnlearnConfig, set[str]]:
    """`build_config` without the method's `configure` hook, so without importing any method
    module (torch): the method name, every key and value, the loss params. Returns the config and
    the dotted keys the user set."""
    from ...config import load_yaml

    return resolve_config(method, [load_yaml(config_path) if config_path else {}, parse_overrides(overrides)])


def resolve_config(method: str | None, layers: Sequence[Mapping[str, Any]]) -> tuple[UnlearnConfig, set[str]]:
    """`UnlearnConfig` defaults <- the method's defaults (`training.resolve.layered`, the one place
    they are layered; TOFU has no benchmark YAML) <- each layer in order (a config file, key=value
    overrides, a search run's options: nested or dotted keys, merged against the dataclass schema).
    Torch-free (no `configure` hook). Returns the config and the dotted keys the layers set."""
    from ...methods.base import method_info

    name = method or next((str(layer["method"]) for layer in reversed(layers) if layer.get("method")),
                          UnlearnConfig.method)
    spec = method_info(name)
    cfg = UnlearnConfig(method=spec.name)
    cfg.loss, cfg.train = layered(spec)
    explicit: set[str] = set()
    for layer in layers:
        if layer:
            apply_overrides(cfg, layer)
        explicit |= set(layer) | {f"{k}.{kk}" for k, v in layer.items() if isinstance(v, Mapping) for kk in v}
    cfg.method = spec.name
    check_loss_params(spec, cfg.loss)
    if cfg.attacks.names:  # every attack name and option, before any model is loaded
        from ...attacks import attack_options, parse_model_attacks

        for name in parse_model_attacks(cfg.attacks.names):
            attack_options(name, cfg.attacks)
    # The data/split chosen for the run also decide which prepared models are used.
    cfg.prepare.data, cfg.prepare.forget_split = cfg.data, cfg.forget_split
    return cfg, explicit


def _group(source: str, split: str) -> int:
    """Questions per author: 20 in TOFU; the generated benchmark records it in meta.json."""
    meta = Path(source) / "meta.json"
    if meta.is_file():
        import json

        cfg = json.loads(meta.read_text()).get("config", {})
        return int(cfg.get("questions_per_author", 1))
    return 20 if Path(source).is_dir() else 1


def build_data(fmt: PromptFormatter, source: str, split: str, method: str, params: dict[str, Any],
               forget_indices: list[int] | None = None, *, model: Any = None, model_path: str | None = None,
               cache_dir: str | None = None) -> UnlearnData:
    """The encoded forget / retain rows, and the method's extra sides (`build_data`; with
    `build_data_model`, made by `model`, e.g. AltPO's alternates, cached under `cache_dir`)."""
    from ...training.loop import UnlearnData

    forget_rows = tofu.load_split(split, source)
    if forget_indices is not None:
        forget_rows = [forget_rows[i] for i in forget_indices]
    retain_rows = tofu.load_split(tofu.FORGET_TO_RETAIN[split], source)
    data = UnlearnData(
        forget=[fmt.encode(r["question"], r["answer"]) for r in forget_rows],
        retain=[fmt.encode(r["question"], r["answer"]) for r in retain_rows],
    )
    spec = get_method(method)
    if spec.build_data is not None:  # extra sides built from the forget rows (IdkDPO's refusals)
        extra = ({"model": model, "model_path": model_path, "cache_dir": cache_dir or str(default_cache_dir())}
                 if spec.build_data_model else {})
        for side, rows in spec.build_data(fmt, forget_rows, params, **extra).items():
            setattr(data, side, rows)
    return data


def default_run_dir(cfg: UnlearnConfig) -> Path:
    return Path("runs") / f"{cfg.method}-{cfg.forget_split}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_unlearning(cfg: UnlearnConfig, resume: bool = False, evaluate: bool = True,
                   batch_hook_factory=None, on_epoch_eval=None, on_step=None) -> dict[str, Any]:
    """Unlearn, save the model, evaluate against the retain oracle; returns the run record.
    `on_epoch_eval(model, evaluate) -> summary` replaces the evaluation during training (every
    `train.eval_every_epochs`): it may call `evaluate(model)`, return {} to skip, or raise to stop
    the run (the search's staged evaluation); `on_step(step)` is the loop's per-step monitor."""
    import torch

    from ...data.prompting import PromptFormatter
    from ...evaluation.tofu_eval import TofuEvaluator, load_results, save_results
    from ...models.device import runtime_info
    from ...models.loading import load_model_and_tokenizer
    from ...training.loop import Unlearner, write_json

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = tofu.check_forget_split(cfg.forget_split)
    spec = get_method(cfg.method)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run_dir)
    save_config(cfg, run_dir / "config.yaml")

    source, model_path, retain_results_path = _inputs(cfg)
    model, tok = load_model_and_tokenizer(model_path, dtype="float32" if not torch.cuda.is_available() else None)
    fmt = PromptFormatter(tok, max_length=cfg.train.max_length)
    params = dict(cfg.loss)
    n_forget = len(tofu.load_split(split, source))
    part = forget_part_indices(n_forget, cfg.forget_part, cfg.search_fraction, group=_group(source, split))
    data = build_data(fmt, source, split, spec.name, params, part, model=model, model_path=model_path,
                      cache_dir=cfg.prepare.cache_dir or None)
    retain_results = load_results(retain_results_path) if retain_results_path else None
    evaluator = TofuEvaluator(source, split, cfg.eval, forget_indices=part)

    def eval_during(m) -> dict[str, Any]:
        return evaluator.evaluate(m, tok, retain_results=retain_results, fmt=fmt)["summary"]

    during = eval_during if on_epoch_eval is None else (lambda m: on_epoch_eval(m, eval_during))

    factory = batch_hook_factory or spec.batch_hook_factory
    hook = factory(model, fmt, source, split, params) if factory else None
    unlearner = Unlearner(model, fmt, spec, params, data, cfg.train, run_dir=run_dir,
                          evaluate=during if cfg.train.eval_every_epochs else None, batch_hook=hook,
                          on_step=on_step)
    record = unlearner.run(resume=resume)
    record.update(method=spec.name, forget_split=split, model=model_path, data=source)
    if unlearner.acc.is_main_process:
        final = unlearner.unwrapped()
        with atomic_dir(run_dir / ("adapter" if cfg.train.lora else "model")) as tmp:
            final.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
        write_json(run_dir / "train.json", record)
        if evaluate:
            final.eval()
            res = evaluator.evaluate(final, tok, retain_results=retain_results, fmt=fmt)
            if cfg.attacks.names:
                _add_attacks(res, final, tok, fmt, cfg, source, part, retain_results)
            res.update(method=spec.name, run_dir=str(run_dir), train_seconds=record["seconds"],
                       seconds_per_step=record["seconds_per_step"], config=to_dict(cfg), runtime=runtime_info())
            save_results(res, run_dir / "results.json")
            record.update(summary=res["summary"], eval_seconds=res["eval_seconds"] + res.get("attack_seconds", 0.0))
    unlearner.acc.wait_for_everyone()
    return record


def _add_attacks(res: dict[str, Any], model: Any, tok: Any, fmt: PromptFormatter, cfg: UnlearnConfig, source: str,
                 part: list[int] | None, retain_results: dict[str, Any] | None) -> None:
    """The run's recovery attacks (`cfg.attacks`) on the final model: `res["attacks"]` and the
    attacked summaries as "<key>@<attack>" in `res["summary"]`; `res["attack_seconds"]` = their cost."""
    from ...attacks import parse_model_attacks
    from ...attacks.suite import flat_summary
    from ...benchmarks.base import default_cache_dir
    from ...evaluation.tofu_eval import load_results
    from .attacks import run_tofu_attacks

    t0 = time.time()
    target_results, oracle = None, None
    if not cfg.model:  # the prepared target's results (recovery) and oracle (the floor)
        p = prepare(cfg.prepare)
        target_results = load_results(p.target_results)
        oracle = str(p.retain) if cfg.attacks.oracle else None
    res["attacks"] = run_tofu_attacks(
        model, tok, fmt, parse_model_attacks(cfg.attacks.names), source=source, split=cfg.forget_split, part=part,
        eval_cfg=cfg.eval, clean=res, retain_results=retain_results, target_results=target_results,
        oracle_path=oracle, cfg=cfg.attacks, cache_root=str(cfg.prepare.cache_dir or default_cache_dir()))
    res["summary"].update(flat_summary(res["attacks"]))
    res["attack_seconds"] = time.time() - t0
    res["summary"]["attack_seconds"] = res["attack_seconds"]


def _inputs(cfg: UnlearnConfig) -> tuple[str, str, str | None]:
    """(data source, model to unlearn, the retain oracle's results file or None): a given model,
    or the benchmark's prepared target (prepared here when not cached)."""
    if cfg.model:
        return resolve_data(cfg.prepare), cfg.model, cfg.retain_results or None
    prepared = prepare(cfg.prepare)
    return prepared.data, str(prepared.target), cfg.retain_results or str(prepared.retain_results)


def resume_config(run_dir: str | Path) -> UnlearnConfig:
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    data = load_yaml(p)
    cfg = build_config(data.get("method"), None, [])
    apply_overrides(cfg, data)
    cfg.run_dir = str(run_dir)
    return cfg


def save_run_config(cfg: UnlearnConfig, path: str | Path) -> None:
    """The full resolved config of a run, for `evounlearn unlearn --config PATH` to reproduce it;
    without its run directory, so that re-running it never writes into this run's folder."""
    import dataclasses

    save_config(dataclasses.replace(cfg, run_dir=""), path)


def run_config(run: MethodRun, options: Sequence[Mapping[str, Any]], *, part: str, seed: int | None,
               fraction: float | None, run_dir: str | Path) -> UnlearnConfig:
    """One search run's full config, built in memory (`resolve_config`) from the benchmark's
    options (layers: e.g. a size preset, the search's `unlearn` section, a generator setting) <-
    the run's own settings (part, seed, its `train` overrides) <- its loss params, then the
    method's `configure` hook. A loss program's text is
    read from RUN_DIR/loss.py (the checked program the candidate job wrote), as
    `evounlearn unlearn --loss-file` reads it. On the search part the evaluation is lean
    (`EvalConfig.lean`) unless the options set it."""
    layers = [{k: v for k, v in layer.items() if k not in ("run_dir", "method")} for layer in options]
    own: dict[str, Any] = {"forget_part": part, "train": dict(run.train)}
    if seed is not None:
        own["train"]["seed"] = int(seed)
    if fraction is not None:
        own["search_fraction"] = float(fraction)
    if part == "search" and not any("lean" in (layer.get("eval") or {}) for layer in layers):
        # what the search scores: only the metrics its fitnesses and leaderboards read (the same
        # values); the report part (finalists, baselines) gets the full evaluation
        own["eval"] = {"lean": True}
    loss = dict(run.loss)
    if loss.get("code"):
        # the program holds one candidate, whose signature gives the interface
        rd = Path(run_dir)
        if not (rd / "loss.py").exists():
            atomic_write_text(rd / "loss.py", str(loss["code"]))
        loss = {k: v for k, v in loss.items() if k not in ("code", "interface", "function")}
        loss["loss_file"] = str(rd / "loss.py")
    cfg, explicit = resolve_config(run.method, [*layers, own, {"loss": loss, "run_dir": str(run_dir)}])
    configure(get_method(cfg.method), cfg, explicit)  # e.g. `evolved` reads and checks its loss program
    return cfg
