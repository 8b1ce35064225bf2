"""TOFU-shaped benchmarks: real TOFU (a local folder or the Hub) and the generated benchmark.

Prepare (`evounlearn prepare`, SPEC 5): target = tiny Llama fine-tuned on `full` + general
knowledge (real_authors, world_facts); retain oracle = the same recipe on the matching
`retainXX` + general knowledge. Both share one BPE tokenizer trained on the benchmark's text, are
saved with `save_pretrained`, evaluated with the full TOFU suite, and cached by a hash of the data
and the recipe, so a second run is instant.

Unlearn (`evounlearn unlearn`): run one method on one forget split (or one part of it), evaluate
it against the retain oracle, and keep everything needed to re-run it in a run directory:

    RUN_DIR/config.yaml    the full config (method, loss params, training options, data)
    RUN_DIR/train.json     loss history, timings, evaluations during training
    RUN_DIR/results.json   the full evaluation (per-example values) + summary
    RUN_DIR/model/         the unlearned model (or adapter/ for LoRA runs)
    RUN_DIR/checkpoint/    the last good training state (for --resume)

The search runs a candidate through `TofuBenchmark.run`, which writes `RUN_DIR/loss.py` and
`RUN_DIR/unlearn_config.yaml` so that
`evounlearn unlearn --method evolved --loss-file RUN_DIR/loss.py --config RUN_DIR/unlearn_config.yaml`
reproduces it (same seed, same config, same numbers).

Fitness (SPEC 2.1): `0.5 * MU + 0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob)`, every value
clamped to [0, 1]; the utility is MU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..config import apply_overrides, parse_overrides, save_config, to_dict
from ..data import tofu
from ..data.generated import ensure_benchmark
from ..errors import ConfigError
from ..methods import get_method
from ..methods.resolve import check_loss_params, configure, method_defaults
from .tofu_config import PrepareConfig, UnlearnConfig

# torch, transformers and the evaluation stack are imported inside the functions that use them:
# the command line imports this module to check a command's options and data in well under a
# second, before anything heavy is loaded.
if TYPE_CHECKING:
    from ..data.prompting import PromptFormatter
    from ..methods.resolve import MethodRun
    from ..training.loop import UnlearnData
from .base import (
    Benchmark,
    FitnessSpec,
    Reference,
    RunResult,
    StageHook,
    default_cache_dir,
    metric,
    register_benchmark,
)
from .parts import forget_part_indices

log = logging.getLogger(__name__)
RECIPE_VERSION = "tiny-v1"


@dataclass
class Prepared:
    """Paths of a prepared benchmark: the models and their evaluation results."""

    root: Path
    data: str
    forget_split: str
    target: Path
    retain: Path
    target_results: Path
    retain_results: Path
    info: dict[str, Any]


def resolve_data(cfg: PrepareConfig) -> str:
    if cfg.data == "generated":
        return str(ensure_benchmark(cfg.generated, Path(cfg.cache_dir or default_cache_dir()) / "data"))
    return cfg.data


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_fingerprint(source: str, splits: list[str]) -> str:
    h = hashlib.sha256()
    for s in splits:
        for row in tofu.load_split(s, source):
            h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


def general_pairs(source: str) -> list[tuple[str, str]]:
    return [(r["question"], r["answer"]) for s in ("real_authors", "world_facts") for r in tofu.load_split(s, source)]


def tokenizer_corpus(source: str, forget_split: str) -> list[str]:
    texts = []
    for s in ("full", "real_authors_perturbed", "world_facts_perturbed", f"{forget_split}_perturbed",
              "retain_perturbed", tofu.FORGET_TO_HOLDOUT[forget_split]):
        for r in tofu.load_split(s, source):
            texts.append(r["question"] + " " + r["answer"])
            for k in ("paraphrased_answer", "paraphrased_question"):
                if r.get(k):
                    texts.append(r[k])
            texts.extend(r.get("perturbed_answer") or [])
    return texts


def _train_one(name: str, out: Path, tokenizer, pairs, cfg: PrepareConfig) -> dict:
    from ..data.prompting import PromptFormatter
    from ..models.tiny import build_tiny_llama
    from ..training.finetune import finetune

    model = build_tiny_llama(tokenizer, cfg.model, seed=cfg.train.seed)
    fmt = PromptFormatter(tokenizer, max_length=cfg.train.max_length)
    stats = finetune(model, fmt, pairs, cfg.train, desc=f"prepare {name}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    stats["parameters"] = sum(p.numel() for p in model.parameters())
    return stats


def prepare(cfg: PrepareConfig, force: bool = False) -> Prepared:
    """Train (or fetch from cache) the target and retain models and evaluate both."""
    import torch

    from ..evaluation.tofu_eval import TofuEvaluator, save_results
    from ..models.loading import load_model_and_tokenizer
    from ..models.tiny import train_bpe_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = tofu.check_forget_split(cfg.forget_split)
    source = resolve_data(cfg)
    retain_split = tofu.FORGET_TO_RETAIN[split]
    t0 = time.time()
    data_hash = _data_fingerprint(source, ["full", retain_split, "real_authors", "world_facts"])
    recipe = {"version": RECIPE_VERSION, "model": to_dict(cfg.model), "train": to_dict(cfg.train)}
    root = Path(cfg.cache_dir or default_cache_dir()) / "prepare" / _hash({"data": data_hash, "recipe": recipe})
    root.mkdir(parents=True, exist_ok=True)
    target_dir, retain_dir = root / "target", root / f"retain-{split}"
    info_path = root / f"prepare-{split}.json"
    if force:
        for p in (target_dir, retain_dir, info_path):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    info: dict[str, Any] = json.loads(info_path.read_text()) if info_path.exists() else {}
    general = general_pairs(source)
    tok_dir = root / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        tokenizer = train_bpe_tokenizer(tokenizer_corpus(source, split), cfg.model.vocab_size, tok_dir)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))

    if not (target_dir / "config.json").exists():
        log.info("training the target model on full + general knowledge")
        pairs = [(r["question"], r["answer"]) for r in tofu.load_split("full", source)] + general
        info["target_train"] = _train_one("target", target_dir, tokenizer, pairs, cfg)
    if not (retain_dir / "config.json").exists():
        log.info("training the retain oracle on %s + general knowledge", retain_split)
        pairs = [(r["question"], r["answer"]) for r in tofu.load_split(retain_split, source)] + general
        info["retain_train"] = _train_one("retain", retain_dir, tokenizer, pairs, cfg)
    train_seconds = time.time() - t0

    retain_res, target_res = root / f"retain_results-{split}.json", root / f"target_results-{split}.json"
    if not (retain_res.exists() and target_res.exists()):
        ev = TofuEvaluator(source, split, cfg.eval)
        model, tok = load_model_and_tokenizer(retain_dir)
        res = ev.evaluate(model, tok)
        # The oracle is its own reference: forget quality 1.0, PrivLeak 0 by definition.
        res = ev.evaluate(model, tok, retain_results=res)
        save_results(res, retain_res)
        model, tok = load_model_and_tokenizer(target_dir)
        save_results(ev.evaluate(model, tok, retain_results=res, reference_model=None), target_res)
    info.update({"data": source, "forget_split": split, "recipe": recipe, "root": str(root),
                 "train_and_cache_seconds": train_seconds, "total_seconds": time.time() - t0})
    info_path.write_text(json.dumps(info, indent=1))
    return Prepared(root, source, split, target_dir, retain_dir, target_res, retain_res, info)


def check_tofu_data(data: str, forget_split: str) -> None:
    """`data`'s splits that a run on `forget_split` reads (data.tofu.check_source); the forget
    split's name is checked for every source."""
    tofu.check_forget_split(forget_split)
    if data != "generated":
        tofu.check_source(data, forget_split)


def summaries(p: Prepared) -> dict[str, dict]:
    from ..evaluation.tofu_eval import load_results

    return {"target": load_results(p.target_results)["summary"], "retain": load_results(p.retain_results)["summary"]}


# ------------------------------------------------------------------------------------------------
# unlearning runs


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
    from ..config import load_yaml
    from ..methods.base import method_info

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
    from ..training.loop import UnlearnData

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
                   batch_hook_factory=None, on_epoch_eval=None) -> dict[str, Any]:
    """Unlearn, save the model, evaluate against the retain oracle; returns the run record.

    `on_epoch_eval(model, evaluate) -> summary`, when given, replaces the evaluation during
    training (every `train.eval_every_epochs`): it may call `evaluate(model)`, return {} to skip,
    or raise to stop the run (the search's staged evaluation)."""
    import torch

    from ..data.prompting import PromptFormatter
    from ..evaluation.tofu_eval import TofuEvaluator, load_results, save_results
    from ..models.loading import load_model_and_tokenizer
    from ..training.loop import Unlearner, write_json

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = tofu.check_forget_split(cfg.forget_split)
    spec = get_method(cfg.method)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir = str(run_dir)
    save_config(cfg, run_dir / "config.yaml")

    if cfg.model:
        source = resolve_data(cfg.prepare)
        model_path, retain_results_path = cfg.model, cfg.retain_results or None
    else:
        prepared = prepare(cfg.prepare)
        source, model_path = prepared.data, str(prepared.target)
        retain_results_path = cfg.retain_results or str(prepared.retain_results)
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
                          evaluate=during if cfg.train.eval_every_epochs else None, batch_hook=hook)
    record = unlearner.run(resume=resume)
    record.update(method=spec.name, forget_split=split, model=model_path, data=source)
    if unlearner.acc.is_main_process:
        final = unlearner.unwrapped()
        out = run_dir / ("adapter" if cfg.train.lora else "model")
        final.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        write_json(run_dir / "train.json", record)
        if evaluate:
            final.eval()
            res = evaluator.evaluate(final, tok, retain_results=retain_results, fmt=fmt)
            res.update(method=spec.name, run_dir=str(run_dir), train_seconds=record["seconds"],
                       seconds_per_step=record["seconds_per_step"], config=to_dict(cfg))
            save_results(res, run_dir / "results.json")
            record["summary"] = res["summary"]
            record["eval_seconds"] = res["eval_seconds"]
    unlearner.acc.wait_for_everyone()
    return record


def resume_config(run_dir: str | Path) -> UnlearnConfig:
    p = Path(run_dir) / "config.yaml"
    if not p.exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    data = yaml.safe_load(p.read_text())
    cfg = build_config(data.get("method"), None, [])
    apply_overrides(cfg, data)
    cfg.run_dir = str(run_dir)
    return cfg


# ------------------------------------------------------------------------------------------------
# the benchmark (protocol: benchmarks.base.Benchmark)


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def tofu_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """SPEC 2.1: `0.5 * MU + 0.5 * mean(1 - forget_rouge, 1 - forget_prob)`, clamped to [0, 1]."""
    mu = _clamp(metric(summary, "model_utility"))
    rouge = _clamp(metric(summary, "forget_rouge"))
    prob = _clamp(metric(summary, "forget_prob"))
    return 0.5 * mu + 0.5 * (_clamp(1.0 - rouge) + _clamp(1.0 - prob)) / 2.0


TOFU_FORMULA = "0.5 * MU + 0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob), values clamped to [0, 1]"
GUIDANCE = (
    "- Forget metrics high (forget_ROUGE, forget_Prob): the model still remembers; forget harder "
    "(a larger forget weight or a sharper penalty, a larger margin, more epochs).",
    "- Utility low (MU or its components, the retain scores): protect retention (a stronger "
    "retain term, anchor the retain log-probs to their reference, bound the forget term with "
    "softplus / sigmoid / clamp, fewer epochs).",
    "- Training loss diverging or stuck: fix the scale of the terms and bound the forget term.",
)


@dataclass
class TofuSetting:
    """A TOFU-shaped benchmark's options (`UnlearnConfig` fields); the models are prepared on
    first use (`models()`), since a candidate's run prepares them itself (cached)."""

    options: dict[str, Any]
    cfg: UnlearnConfig
    _models: dict[str, Any] | None = None

    def models(self) -> dict[str, Any]:
        """{"source", "target", "retain" (or None), "retain_results" (or None)}."""
        import torch

        from ..evaluation.tofu_eval import load_results

        if self._models is None:
            cfg = self.cfg
            # Threads follow the `prepare.threads` / `threads` options, else what the process has
            # (OMP_NUM_THREADS, or the share a search worker was given): never every core, since
            # workers run side by side.
            threads = torch.get_num_threads()
            if cfg.prepare.threads:
                torch.set_num_threads(cfg.prepare.threads)
            if cfg.model:
                m = {"source": resolve_data(cfg.prepare), "target": cfg.model, "retain": None,
                     "retain_results": load_results(cfg.retain_results) if cfg.retain_results else None}
            else:
                p = prepare(cfg.prepare)
                m = {"source": p.data, "target": str(p.target), "retain": str(p.retain),
                     "retain_results": load_results(cfg.retain_results or p.retain_results)}
            torch.set_num_threads(cfg.threads or threads)
            self._models = m
        return self._models


@register_benchmark
class TofuBenchmark(Benchmark):
    name = "tofu"
    description = ("TOFU: question-answer pairs about fictitious authors (a local TOFU folder or the Hub, "
                   "`data=`), or the generated TOFU-shaped benchmark (`data=generated`)")
    fitness = FitnessSpec("tofu", tofu_fitness, "model_utility", TOFU_FORMULA)
    metric_keys = ("model_utility", "forget_rouge", "forget_prob", "forget_quality")
    prompt_notes = (
        "TOFU: question-answer pairs about fictitious authors. Fitness = 0.5 * MU + "
        "0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob), values clamped to [0, 1]; MU (model "
        "utility) is the harmonic mean of probability, ROUGE and truth-ratio scores on the retain "
        "set, real authors and world facts."
    )
    prompt_guidance = GUIDANCE

    def prepare(self, options: Mapping[str, Any] | None = None) -> TofuSetting:
        cfg = UnlearnConfig()
        apply_overrides(cfg, dict(options or {}))
        cfg.prepare.data, cfg.prepare.forget_split = cfg.data, cfg.forget_split
        return TofuSetting(dict(options or {}), cfg)

    def check_data(self, options: Mapping[str, Any] | None = None) -> None:
        """Every split the run reads (a local folder; the generated benchmark is made by us and a
        Hub dataset is checked as it loads)."""
        check_tofu_data(str((options or {}).get("data") or "generated"),
                        str((options or {}).get("forget_split") or "forget10"))

    def cli_prepare(self, config: str | None, overrides: list[str], force: bool = False) -> Any:
        from .tofu_cli import cli_prepare

        return cli_prepare(config, overrides, force)

    def cli_eval(self, request: Any) -> Any:
        from .tofu_cli import cli_eval

        return cli_eval(request)

    def cli_unlearn(self, method: str | None, config: str | None, overrides: list[str], *,
                    resume: str | None = None) -> Any:
        from .tofu_cli import cli_unlearn

        return cli_unlearn(method, config, overrides, resume=resume)

    def paths(self, prepared: TofuSetting) -> dict[str, str | None]:
        m = prepared.models()
        return {k: m[k] for k in ("target", "retain") if m[k]}

    def data_name(self, prepared: TofuSetting) -> str:
        return str(prepared.models()["source"])

    def part_indices(self, prepared: TofuSetting, part: str, fraction: float | None = None) -> list[int] | None:
        cfg, source = prepared.cfg, prepared.models()["source"]
        split = tofu.check_forget_split(cfg.forget_split)
        n = len(tofu.load_split(split, source))
        return forget_part_indices(n, part, cfg.search_fraction if fraction is None else fraction,
                                   group=_group(source, split))

    def reference(self, prepared: TofuSetting, part: str = "all", fraction: float | None = None) -> Reference:
        """The target and the oracle evaluated on one part with the run's evaluation settings."""
        from ..data.prompting import PromptFormatter
        from ..evaluation.tofu_eval import TofuEvaluator
        from ..models.loading import load_model_and_tokenizer

        cfg, m = prepared.cfg, prepared.models()
        split = tofu.check_forget_split(cfg.forget_split)
        idx = self.part_indices(prepared, part, fraction)
        out: dict[str, Any] = {}
        for name in ("target", "retain"):
            if not m[name]:
                continue
            model, tok = load_model_and_tokenizer(m[name], dtype="float32")
            model.eval()
            fmt = PromptFormatter(tok, max_length=cfg.train.max_length)
            ev = TofuEvaluator(m["source"], split, cfg.eval, forget_indices=idx)
            out[name] = ev.evaluate(model, tok, retain_results=m["retain_results"], fmt=fmt)["summary"]
        return Reference(out["target"], out.get("retain"))

    def run(self, prepared: TofuSetting, run: MethodRun, *, part: str = "all", fraction: float | None = None,
            seed: int | None = None, run_dir: str | Path | None = None, stage1_epochs: int = 0,
            on_stage: StageHook | None = None) -> RunResult:
        """`run_unlearning` built from RUN_DIR/unlearn_config.yaml (+ RUN_DIR/loss.py for a loss
        program), exactly what `evounlearn unlearn --config ... --loss-file ...` does."""
        rd = Path(run_dir) if run_dir else default_run_dir(UnlearnConfig(method=run.method))
        rd.mkdir(parents=True, exist_ok=True)
        settings = run_settings(_deep_merge(prepared.options, {"train": dict(run.train)}), seed=seed,
                                forget_part=part, epochs=None)
        if fraction is not None:
            settings["search_fraction"] = float(fraction)
        (rd / "unlearn_config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
        overrides = [f"run_dir={rd}"]
        loss = dict(run.loss)
        if loss.get("code"):
            # the program holds one candidate, whose signature gives the interface
            if not (rd / "loss.py").exists():
                (rd / "loss.py").write_text(str(loss["code"]))
            loss = {k: v for k, v in loss.items() if k not in ("code", "interface", "function")}
            overrides.append(f"loss.loss_file={rd / 'loss.py'}")
        overrides += [f"loss.{k}={v}" for k, v in loss.items()]
        cfg = build_config(run.method, str(rd / "unlearn_config.yaml"), overrides)
        staged = 0 < int(stage1_epochs) < cfg.train.epochs
        if staged:
            cfg.train.eval_every_epochs = int(stage1_epochs)
        record = run_unlearning(cfg, on_epoch_eval=on_stage if staged else None)
        return RunResult(summary=record.get("summary") or {}, train=record,
                         eval_seconds=float(record.get("eval_seconds", 0.0)), epochs=cfg.train.epochs)


@register_benchmark
class GeneratedBenchmark(TofuBenchmark):
    """The generated TOFU-shaped benchmark (the default: no download, trains in minutes)."""

    name = "generated"
    aliases = ("gen",)
    description = "the generated TOFU-shaped benchmark (fictitious people, question-answer pairs)"
    fitness = FitnessSpec("generated", tofu_fitness, "model_utility", TOFU_FORMULA)
    prompt_notes = (
        "a generated TOFU-shaped benchmark (fictitious people, question-answer pairs). Fitness = "
        "0.5 * MU + 0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob), values clamped to [0, 1]; MU "
        "(model utility) aggregates retain-set and general-knowledge scores."
    )


def run_settings(unlearn: Mapping[str, Any] | None, *, seed: int | None, forget_part: str,
                 epochs: int | None) -> dict[str, Any]:
    """The UnlearnConfig fields of one run (written as unlearn_config.yaml)."""
    extra: dict[str, Any] = {"forget_part": forget_part, "train": {}}
    if seed is not None:
        extra["train"]["seed"] = int(seed)
    if epochs is not None:
        extra["train"]["epochs"] = int(epochs)
    data = _deep_merge(dict(unlearn or {}), extra)
    data.pop("run_dir", None)
    data.pop("method", None)
    return data


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = dict(v) if isinstance(v, Mapping) else v
    return out
