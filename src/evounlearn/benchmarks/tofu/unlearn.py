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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ...config import apply_overrides, merged, parse_overrides, save_config, to_dict
from ...data import tofu
from ...errors import ConfigError
from ...files import atomic_dir
from ...methods import get_method
from ...training.resolve import check_loss_params, configure, method_defaults
from .build import prepare, resolve_data
from .config import UnlearnConfig

# torch, transformers and the evaluation stack are imported inside the functions that use them:
# the command line imports this module to check a command's options and data in well under a
# second, before anything heavy is loaded.
if TYPE_CHECKING:
    from ...data.prompting import PromptFormatter
    from ...training.loop import UnlearnData
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
    from ...methods.base import method_info

    ov = parse_overrides(overrides)
    file_data: dict[str, Any] = load_yaml(config_path) if config_path else {}
    name = method or ov.get("method") or file_data.get("method") or UnlearnConfig.method
    spec = method_info(str(name))
    cfg = UnlearnConfig(method=spec.name)
    defaults = method_defaults(spec)  # the one resolver's layers (TOFU has no benchmark YAML)
    apply_overrides(cfg, {f"train.{k}": v for k, v in defaults["train"].items()})
    cfg.loss = defaults["loss"]
    if file_data:
        apply_overrides(cfg, file_data)
    apply_overrides(cfg, ov)
    cfg.method = spec.name
    check_loss_params(spec, cfg.loss)
    explicit = set(ov) | {f"{k}.{kk}" for k, v in file_data.items() if isinstance(v, dict) for kk in v}
    # The data/split chosen for the run also decide which prepared models are used.
    cfg.prepare.data, cfg.prepare.forget_split = cfg.data, cfg.forget_split
    return cfg, explicit | set(file_data)


def _group(source: str, split: str) -> int:
    """Questions per author: 20 in TOFU; the generated benchmark records it in meta.json."""
    meta = Path(source) / "meta.json"
    if meta.is_file():
        import json

        cfg = json.loads(meta.read_text()).get("config", {})
        return int(cfg.get("questions_per_author", 1))
    return 20 if Path(source).is_dir() else 1


def build_data(fmt: PromptFormatter, source: str, split: str, method: str, params: dict[str, Any],
               forget_indices: list[int] | None = None) -> UnlearnData:
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
        for side, rows in spec.build_data(fmt, forget_rows, params).items():
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
    data = build_data(fmt, source, split, spec.name, params, part)
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
            res.update(method=spec.name, run_dir=str(run_dir), train_seconds=record["seconds"],
                       seconds_per_step=record["seconds_per_step"], config=to_dict(cfg), runtime=runtime_info())
            save_results(res, run_dir / "results.json")
            record.update(summary=res["summary"], eval_seconds=res["eval_seconds"])
    unlearner.acc.wait_for_everyone()
    return record


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
    data = yaml.safe_load(p.read_text())
    cfg = build_config(data.get("method"), None, [])
    apply_overrides(cfg, data)
    cfg.run_dir = str(run_dir)
    return cfg


def run_settings(unlearn: Mapping[str, Any] | None, *, seed: int | None, forget_part: str,
                 epochs: int | None) -> dict[str, Any]:
    """The UnlearnConfig fields of one run (written as unlearn_config.yaml)."""
    extra: dict[str, Any] = {"forget_part": forget_part, "train": {}}
    if seed is not None:
        extra["train"]["seed"] = int(seed)
    if epochs is not None:
        extra["train"]["epochs"] = int(epochs)
    data = merged(dict(unlearn or {}), extra)
    data.pop("run_dir", None)
    data.pop("method", None)
    return data
