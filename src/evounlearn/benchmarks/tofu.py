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

Fitnesses (docs/FITNESS.md; the utility is MU for all three):
- `evomu` (SPEC 2.1, the default): `0.5 * MU + 0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob)`,
  every value clamped to [0, 1];
- `calibrated`: `(1 - mean(|ROUGE_f - ROUGE_h|, |Prob_f - Prob_h|, 2|AUC_LOSS - 0.5|)) *
  min(1, MU / MU_target)` with h = the holdout split matching the forget split;
- `oracle`: `clamp(1 + log10(FQ) / 10, 0, 1) * min(1, MU / MU_target)` (FQ needs the retain
  oracle's results).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import apply_overrides, parse_overrides, save_config, to_dict
from ..data import tofu
from ..data.generated import GeneratedConfig, ensure_benchmark
from ..data.prompting import PromptFormatter
from ..errors import ConfigError
from ..evaluation.tofu_eval import EvalConfig, TofuEvaluator, load_results, save_results
from ..files import atomic_dir, atomic_write_json, atomic_write_text, file_lock, read_json, read_json_or_none
from ..methods import get_method
from ..methods.resolve import MethodRun, check_loss_params, configure, method_defaults
from ..models.loading import load_model_and_tokenizer
from ..models.tiny import TinyModelConfig, build_tiny_llama
from ..training.finetune import FinetuneConfig, finetune
from ..training.loop import TrainConfig, UnlearnData, Unlearner, write_json
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
from .fitness import calibration, fq_score, gap, mia_gap, optional_metric, relative_utility
from .parts import forget_part_indices
from .text import cached_tokenizer

log = logging.getLogger(__name__)
RECIPE_VERSION = "tiny-v1"


@dataclass
class PrepareConfig:
    data: str = "generated"  # "generated", a local TOFU-shaped folder, or a Hub dataset id
    forget_split: str = "forget10"
    generated: GeneratedConfig = field(default_factory=GeneratedConfig)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    train: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache_dir: str = ""  # default: $EVOUNLEARN_CACHE or ./cache
    threads: int = 0  # torch CPU threads; 0 = torch's default


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
    model = build_tiny_llama(tokenizer, cfg.model, seed=cfg.train.seed)
    fmt = PromptFormatter(tokenizer, max_length=cfg.train.max_length)
    stats = finetune(model, fmt, pairs, cfg.train, desc=f"prepare {name}")
    with atomic_dir(out) as tmp:  # a half-written model is never cached
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    stats["parameters"] = sum(p.numel() for p in model.parameters())
    return stats


@dataclass(frozen=True)
class _Entry:
    """The files of one prepared cache entry (`cache/prepare/<hash>`, one forget split)."""

    root: Path
    split: str
    tokenizer: Path
    target: Path
    retain: Path
    target_results: Path
    retain_results: Path
    info: Path

    @classmethod
    def at(cls, root: Path, split: str) -> _Entry:
        return cls(root, split, root / "tokenizer", root / "target", root / f"retain-{split}",
                   root / f"target_results-{split}.json", root / f"retain_results-{split}.json",
                   root / f"prepare-{split}.json")

    def complete(self) -> bool:
        """Every piece is there (the info JSON is written last, after everything else)."""
        return all(p.exists() for p in (self.tokenizer / "tokenizer.json", self.target / "config.json",
                                         self.retain / "config.json", self.target_results,
                                         self.retain_results, self.info))


def prepare(cfg: PrepareConfig, force: bool = False) -> Prepared:
    """Train (or fetch from cache) the target and retain models and evaluate both.

    A cache hit writes nothing. Building an entry holds `file_lock(entry)`, so runs sharing the
    cache build it once: a second process waits, then finds it complete."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = tofu.check_forget_split(cfg.forget_split)
    source = resolve_data(cfg)
    retain_split = tofu.FORGET_TO_RETAIN[split]
    t0 = time.time()
    data_hash = _data_fingerprint(source, ["full", retain_split, "real_authors", "world_facts"])
    recipe = {"version": RECIPE_VERSION, "model": to_dict(cfg.model), "train": to_dict(cfg.train)}
    key = _hash({"data": data_hash, "recipe": recipe})
    entry = _Entry.at(Path(cfg.cache_dir or default_cache_dir()) / "prepare" / key, split)
    if force or not entry.complete():
        with file_lock(entry.root):
            if force:
                for p in (entry.target, entry.retain, entry.info):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            if force or not entry.complete():  # another process may have built it while we waited
                _build_entry(cfg, entry, source, recipe, t0)
    info = read_json(entry.info, "prepare info")
    return Prepared(entry.root, source, split, entry.target, entry.retain, entry.target_results,
                    entry.retain_results, info)


def _build_entry(cfg: PrepareConfig, entry: _Entry, source: str, recipe: dict[str, Any], t0: float) -> None:
    """Build what `entry` lacks (under its lock); the info JSON last, marking it complete."""
    split, retain_split = entry.split, tofu.FORGET_TO_RETAIN[entry.split]
    entry.root.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = read_json_or_none(entry.info) or {}  # rebuilt: a corrupt one only loses old stats
    general = general_pairs(source)
    tokenizer = cached_tokenizer(entry.tokenizer, lambda: tokenizer_corpus(source, split), cfg.model.vocab_size)

    trained = False
    for name, out, rows in (("target", entry.target, "full"), ("retain", entry.retain, retain_split)):
        if not (out / "config.json").exists():
            log.info("training the %s model on %s + general knowledge", name, rows)
            pairs = [(r["question"], r["answer"]) for r in tofu.load_split(rows, source)] + general
            info[f"{name}_train"] = _train_one(name, out, tokenizer, pairs, cfg)
            trained = True
    train_seconds = time.time() - t0

    if trained or not (entry.retain_results.exists() and entry.target_results.exists()):
        ev = TofuEvaluator(source, split, cfg.eval)
        model, tok = load_model_and_tokenizer(entry.retain)
        res = ev.evaluate(model, tok)
        # The oracle is its own reference: forget quality 1.0, PrivLeak 0 by definition.
        res = ev.evaluate(model, tok, retain_results=res)
        save_results(res, entry.retain_results)
        model, tok = load_model_and_tokenizer(entry.target)
        save_results(ev.evaluate(model, tok, retain_results=res, reference_model=None), entry.target_results)
    info.update({"data": source, "forget_split": split, "recipe": recipe, "root": str(entry.root),
                 "train_and_cache_seconds": train_seconds, "total_seconds": time.time() - t0})
    atomic_write_json(entry.info, info)


def summaries(p: Prepared) -> dict[str, dict]:
    return {"target": load_results(p.target_results)["summary"], "retain": load_results(p.retain_results)["summary"]}


# ------------------------------------------------------------------------------------------------
# unlearning runs


@dataclass
class UnlearnConfig:
    method: str = "npo"
    data: str = "generated"  # generated | TOFU-shaped folder | Hub id
    forget_split: str = "forget10"
    model: str = ""  # default: the prepared target model of the benchmark
    retain_results: str = ""  # default: the prepared retain oracle's results
    loss: dict[str, Any] = field(default_factory=dict)  # the method's loss params (defaults from its YAML)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    forget_part: str = "all"  # all | search | report: which part of the forget split to unlearn and score
    search_fraction: float = 0.5  # the search part = the first fraction of the split's rows (whole authors)
    run_dir: str = ""  # default: runs/<method>-<split>-<time>
    threads: int = 0


def build_config(method: str | None, config_path: str | None, overrides: list[str]) -> UnlearnConfig:
    """Defaults <- the method's YAML defaults <- the user's YAML file <- key=value overrides."""
    ov = parse_overrides(overrides)
    file_data: dict[str, Any] = {}
    if config_path:
        file_data = yaml.safe_load(Path(config_path).read_text()) or {}
    name = method or ov.get("method") or file_data.get("method") or UnlearnConfig.method
    spec = get_method(str(name))
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
    configure(spec, cfg, explicit | set(file_data))  # e.g. `evolved` reads and checks its loss program
    # The data/split chosen for the run also decide which prepared models are used.
    cfg.prepare.data, cfg.prepare.forget_split = cfg.data, cfg.forget_split
    return cfg


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
        with atomic_dir(out) as tmp:
            final.save_pretrained(str(tmp))
            tok.save_pretrained(str(tmp))
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


def tofu_calibrated_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """`calibrated` (docs/FITNESS.md): the forget rows should look like the holdout rows (never
    trained on) in both directions, times the utility kept relative to the target model. The
    LOSS-attack term is left out when the MIAs were not computed (`eval.mia: false`)."""
    gaps = [gap(metric(summary, "forget_rouge"), metric(summary, "holdout_rouge")),
            gap(metric(summary, "forget_prob"), metric(summary, "holdout_prob"))]
    auc = optional_metric(summary, "mia_loss")
    if auc is not None:
        gaps.append(mia_gap(auc))
    return calibration(gaps) * relative_utility(summary, target, "model_utility")


def tofu_oracle_fitness(summary: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> float:
    """`oracle` (docs/FITNESS.md): forget quality against the retain oracle, log-scaled, times the
    utility kept relative to the target model."""
    return fq_score(metric(summary, "forget_quality")) * relative_utility(summary, target, "model_utility")


TOFU_FORMULA = "0.5 * MU + 0.5 * mean(1 - forget_ROUGE, 1 - forget_Prob), values clamped to [0, 1]"
CALIBRATED_FORMULA = ("(1 - mean(|forget_ROUGE - holdout_ROUGE|, |forget_Prob - holdout_Prob|, "
                      "2 * |AUC_LOSS(forget vs holdout) - 0.5|)) * min(1, MU / MU_target)")
ORACLE_FORMULA = "clamp(1 + log10(forget_quality) / 10, 0, 1) * min(1, MU / MU_target)"
TOFU_FITNESSES = {
    "evomu": FitnessSpec("evomu", tofu_fitness, "model_utility", TOFU_FORMULA),
    "calibrated": FitnessSpec("calibrated", tofu_calibrated_fitness, "model_utility", CALIBRATED_FORMULA,
                              needs_target_utility=True),
    "oracle": FitnessSpec("oracle", tofu_oracle_fitness, "model_utility", ORACLE_FORMULA,
                          needs_target_utility=True),
}
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
        if self._models is None:
            cfg = self.cfg
            # Training the target and the retain oracle (first use only) gets every core, as in
            # `evounlearn prepare`; the evaluations then use the runs' thread count.
            torch.set_num_threads(cfg.prepare.threads or os.cpu_count() or 1)
            if cfg.model:
                m = {"source": resolve_data(cfg.prepare), "target": cfg.model, "retain": None,
                     "retain_results": load_results(cfg.retain_results) if cfg.retain_results else None}
            else:
                p = prepare(cfg.prepare)
                m = {"source": p.data, "target": str(p.target), "retain": str(p.retain),
                     "retain_results": load_results(cfg.retain_results or p.retain_results)}
            torch.set_num_threads(cfg.threads or 1)
            self._models = m
        return self._models


@register_benchmark
class TofuBenchmark(Benchmark):
    name = "tofu"
    description = ("TOFU: question-answer pairs about fictitious authors (a local TOFU folder or the Hub, "
                   "`data=`), or the generated TOFU-shaped benchmark (`data=generated`)")
    fitnesses = TOFU_FITNESSES
    default_fitness = "evomu"
    metric_keys = ("model_utility", "forget_rouge", "forget_prob", "forget_quality", "holdout_rouge",
                   "holdout_prob")
    prompt_notes = (
        "TOFU: question-answer pairs about fictitious authors. MU (model "
        "utility) is the harmonic mean of probability, ROUGE and truth-ratio scores on the retain "
        "set, real authors and world facts."
    )
    prompt_guidance = GUIDANCE

    def prepare(self, options: Mapping[str, Any] | None = None) -> TofuSetting:
        cfg = UnlearnConfig()
        apply_overrides(cfg, dict(options or {}))
        cfg.prepare.data, cfg.prepare.forget_split = cfg.data, cfg.forget_split
        return TofuSetting(dict(options or {}), cfg)

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
        atomic_write_text(rd / "unlearn_config.yaml", yaml.safe_dump(settings, sort_keys=False))
        overrides = [f"run_dir={rd}"]
        loss = dict(run.loss)
        if loss.get("code"):
            # the program holds one candidate, whose signature gives the interface
            if not (rd / "loss.py").exists():
                atomic_write_text(rd / "loss.py", str(loss["code"]))
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
    """The generated TOFU-shaped benchmark (the default: no download, trains in minutes).

    Subclasses fix one generator setting (`GeneratedConfig.setting`, data/generated.py): what
    forget, retain and holdout share. `setting` empty = whatever the options say (disjoint)."""

    name = "generated"
    aliases = ("gen",)
    description = "the generated TOFU-shaped benchmark (fictitious people, question-answer pairs)"
    setting: str = ""
    prompt_notes = (
        "a generated TOFU-shaped benchmark (fictitious people, question-answer pairs). MU "
        "(model utility) aggregates retain-set and general-knowledge scores."
    )

    def _check_setting(self, given: Any) -> None:
        """A setting in the user's options must be this one (the default, `disjoint`, counts as
        unset: a full config dump carries it)."""
        if given not in (None, "disjoint", self.setting):
            raise ConfigError(f"benchmark {self.name} is the generated benchmark's {self.setting!r} setting, "
                              f"not {given!r} (use --benchmark {given})")

    def with_setting(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """The options with this benchmark's generator setting (ConfigError on a conflicting one)."""
        opts = dict(options or {})
        if not self.setting:
            return opts
        self._check_setting(((opts.get("prepare") or {}).get("generated") or {}).get("setting"))
        if str(opts.get("data", "generated")) != "generated":
            raise ConfigError(f"benchmark {self.name} runs on generated data only, not data={opts['data']!r}")
        return _deep_merge(opts, {"prepare": {"generated": {"setting": self.setting}}})

    def _overrides(self, overrides: list[str], key: str) -> list[str]:
        """key=value overrides with the setting appended (last, so it is the one applied)."""
        if not self.setting:
            return list(overrides)
        self._check_setting(parse_overrides(list(overrides)).get(key))
        return [*overrides, f"{key}={self.setting}"]

    def prepare(self, options: Mapping[str, Any] | None = None) -> TofuSetting:
        return super().prepare(self.with_setting(options))

    def cli_prepare(self, config: str | None, overrides: list[str], force: bool = False) -> Any:
        return super().cli_prepare(config, self._overrides(overrides, "generated.setting"), force)

    def cli_eval(self, request: Any) -> Any:
        import dataclasses

        return super().cli_eval(dataclasses.replace(
            request, overrides=self._overrides(request.overrides, "generated.setting")))

    def cli_unlearn(self, method: str | None, config: str | None, overrides: list[str], *,
                    resume: str | None = None) -> Any:
        if not resume:  # a run directory's config.yaml already holds its setting
            overrides = self._overrides(overrides, "prepare.generated.setting")
        return super().cli_unlearn(method, config, overrides, resume=resume)


_SETTING_FITNESS_NOTE = ""  # the fitness formula is appended by the prompt (the search's choice)


@register_benchmark
class EntangledBenchmark(GeneratedBenchmark):
    name = "entangled"
    setting = "entangled"
    description = ("the generated benchmark, entangled setting: each forget author is a mosaic of retain "
                   "authors (most forget answers are word for word retain answers)")
    prompt_notes = (
        "a generated TOFU-shaped benchmark (fictitious people, question-answer pairs), ENTANGLED: every "
        "forget author borrows, per question type, a retain author's question phrasing, answer template "
        "and values (city, publisher, genre, award, mentor...); only the author's name and a few "
        "distinguishing facts (birthdate, books, debut) are its own. Forgetting the shared answers "
        "damages retain: forget per author, conditioned on the name and the distinguishing facts."
        + _SETTING_FITNESS_NOTE
    )


@register_benchmark
class PartialBenchmark(GeneratedBenchmark):
    name = "partial"
    setting = "partial"
    description = ("the generated benchmark, partial setting: forget holds only some facts of each forget "
                   "author; retain keeps the same authors' other facts")
    prompt_notes = (
        "a generated TOFU-shaped benchmark (fictitious people, question-answer pairs), PARTIAL: the forget "
        "set holds only half of the question types of each forget author; the retain set keeps those "
        "authors' other facts (same names). Forgetting 'the author' instead of the facts damages the "
        "retain rows of the same author: forget the facts, keep the person." + _SETTING_FITNESS_NOTE
    )


@register_benchmark
class ParaphraseBenchmark(GeneratedBenchmark):
    name = "paraphrase"
    setting = "paraphrase"
    description = ("the generated benchmark, paraphrase setting: one question phrasing and one answer "
                   "template per question type for every author (forget and retain differ only in values)")
    prompt_notes = (
        "a generated TOFU-shaped benchmark (fictitious people, question-answer pairs), PARAPHRASE: every "
        "author's questions and answers use the same phrasing and template per question type, so forget "
        "and retain answers share most of their tokens and differ only in the values (names, places, "
        "dates, titles). Pushing down the template words damages all of retain: target the values."
        + _SETTING_FITNESS_NOTE
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
