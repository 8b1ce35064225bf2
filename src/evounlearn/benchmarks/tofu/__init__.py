"""TOFU-shaped benchmarks: real TOFU (a local folder or the Hub), the generated benchmark and its
settings (entangled, partial, paraphrase), registered through the Benchmark protocol.

The package: `config.py` (PrepareConfig, UnlearnConfig; torch-free), `prepare.py` (target +
retain oracle, cached), `unlearn.py` (one unlearning run in a run directory), `fitness.py` (evomu,
calibrated, oracle), `cli.py` (the `prepare` / `eval` / `unlearn` commands), and here the
benchmark classes.

Prepare (`evounlearn prepare`): target = tiny Llama fine-tuned on `full` + general
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

The search runs a candidate through `TofuBenchmark.run`, which builds the run's config in memory
(`unlearn.run_config`, the method resolved once) and writes `RUN_DIR/loss.py` and the full
resolved config `RUN_DIR/unlearn_config.yaml` so that
`evounlearn unlearn --method evolved --loss-file RUN_DIR/loss.py --config RUN_DIR/unlearn_config.yaml`
reproduces it (same seed, same config, same numbers).

Fitnesses: `evomu`, `calibrated`, `oracle` (`fitness.py`, docs/FITNESS.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config import apply_overrides, parse_overrides
from ...data import tofu
from ...errors import ConfigError
from ...evaluation.tofu_metrics import table_keys
from ..base import Benchmark, Reference, RunResult, StageHook, register_benchmark
from ..parts import forget_part_indices
from .build import (
    Prepared,
    check_tofu_data,
    general_pairs,
    prepare,
    resolve_data,
    summaries,
    tokenizer_corpus,
)
from .config import PrepareConfig, UnlearnConfig
from .fitness import (
    CALIBRATED_FORMULA,
    GUIDANCE,
    ORACLE_FORMULA,
    TOFU_FITNESSES,
    TOFU_FORMULA,
    tofu_calibrated_fitness,
    tofu_fitness,
    tofu_oracle_fitness,
)
from .unlearn import (
    _group,
    build_config,
    build_data,
    check_config,
    default_run_dir,
    resume_config,
    run_config,
    run_unlearning,
    save_run_config,
)

if TYPE_CHECKING:
    from ...training.resolve import MethodRun

# the package's API (the submodules' public names, so callers need not know the file layout)
__all__ = [
    "CALIBRATED_FORMULA", "GUIDANCE", "ORACLE_FORMULA", "TOFU_FITNESSES", "TOFU_FORMULA", "EntangledBenchmark",
    "GeneratedBenchmark", "ParaphraseBenchmark", "PartialBenchmark", "PrepareConfig", "Prepared", "TofuBenchmark",
    "TofuPrepared", "UnlearnConfig", "build_config", "build_data", "check_config", "check_tofu_data",
    "default_run_dir", "general_pairs", "prepare", "resolve_data", "resume_config", "run_config",
    "run_unlearning", "save_run_config", "summaries", "tofu_calibrated_fitness", "tofu_fitness", "tofu_oracle_fitness",
    "tokenizer_corpus",
]


@dataclass
class TofuPrepared:
    """A TOFU-shaped benchmark's options (`UnlearnConfig` fields, as layers merged in order: a
    benchmark's preset, the user's options, its setting); the models are prepared on first use
    (`models()`), since a candidate's run prepares them itself (cached)."""

    layers: list[dict[str, Any]]
    cfg: UnlearnConfig
    _models: dict[str, Any] | None = None

    def models(self) -> dict[str, Any]:
        """{"source", "target", "retain" (or None), "retain_results" (or None)}."""
        import torch

        from ...evaluation.tofu_eval import load_results

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
    fitnesses = TOFU_FITNESSES
    default_fitness = "evomu"
    worker_preload = ("transformers.modeling_utils", "evounlearn.benchmarks.tofu.unlearn",
                      "evounlearn.evaluation.tofu_eval", "evounlearn.training.loop")
    metric_keys = table_keys()  # the metric registry's (evaluation/tofu_metrics.py)
    prompt_notes = (
        "TOFU: question-answer pairs about fictitious authors. MU (model "
        "utility) is the harmonic mean of probability, ROUGE and truth-ratio scores on the retain "
        "set, real authors and world facts."
    )
    prompt_guidance = GUIDANCE

    def prepare(self, options: Mapping[str, Any] | None = None) -> TofuPrepared:
        return self._prepared([dict(options or {})])

    def _prepared(self, layers: list[dict[str, Any]]) -> TofuPrepared:
        cfg = UnlearnConfig()
        for layer in layers:
            apply_overrides(cfg, layer)
        cfg.prepare.data, cfg.prepare.forget_split = cfg.data, cfg.forget_split
        return TofuPrepared(layers, cfg)

    def check_data(self, options: Mapping[str, Any] | None = None) -> None:
        """Every split the run reads (a local folder; the generated benchmark is made by us and a
        Hub dataset is checked as it loads)."""
        check_tofu_data(str((options or {}).get("data") or "generated"),
                        str((options or {}).get("forget_split") or "forget10"))

    def cli_prepare(self, config: str | None, overrides: list[str], force: bool = False, *,
                    export: str | None = None, import_from: str | None = None) -> Any:
        from .cli import cli_prepare

        return cli_prepare(config, overrides, force, export=export, import_from=import_from)

    def cli_eval(self, request: Any) -> Any:
        from .cli import cli_eval

        return cli_eval(request)

    def cli_unlearn(self, method: str | None, config: str | None, overrides: list[str], *,
                    resume: str | None = None) -> Any:
        from .cli import cli_unlearn

        return cli_unlearn(method, config, overrides, resume=resume)

    def paths(self, prepared: TofuPrepared) -> dict[str, str | None]:
        m = prepared.models()
        return {k: m[k] for k in ("target", "retain") if m[k]}

    def data_name(self, prepared: TofuPrepared) -> str:
        return str(prepared.models()["source"])

    def models_sha256(self, prepared: TofuPrepared) -> str | None:
        """The sha256 of the target's and the oracle's files (`artifact.models_sha256`): what an
        artifact carries between machines; None for a model given by Hub id."""
        from .artifact import models_sha256

        m = prepared.models()
        return models_sha256(m["target"], m["retain"]) if Path(m["target"]).is_dir() else None

    def probe_lengths(self, prepared: TofuPrepared, part: str = "search") -> dict[str, list[int]] | None:
        """The forget part's answer (+EOS) and prompt token counts under the target's tokenizer."""
        from ...data.prompting import PromptFormatter
        from ...models.loading import load_tokenizer

        m = prepared.models()
        split = tofu.check_forget_split(prepared.cfg.forget_split)
        rows = tofu.load_split(split, m["source"])
        idx = self.part_indices(prepared, part)
        rows = rows if idx is None else [rows[i] for i in idx]
        fmt = PromptFormatter(load_tokenizer(m["target"]), max_length=prepared.cfg.train.max_length)
        return {"answer": [len(fmt.answer_ids(r["answer"])) for r in rows],
                "prompt": [len(fmt.prompt_ids(r["question"])) for r in rows]}

    def part_indices(self, prepared: TofuPrepared, part: str, fraction: float | None = None) -> list[int] | None:
        cfg, source = prepared.cfg, prepared.models()["source"]
        split = tofu.check_forget_split(cfg.forget_split)
        n = len(tofu.load_split(split, source))
        return forget_part_indices(n, part, cfg.search_fraction if fraction is None else fraction,
                                   group=_group(source, split))

    def reference(self, prepared: TofuPrepared, part: str = "all", fraction: float | None = None) -> Reference:
        """The target and the oracle evaluated on one part with the run's evaluation settings."""
        from ...data.prompting import PromptFormatter
        from ...evaluation.tofu_eval import TofuEvaluator
        from ...models.loading import load_model_and_tokenizer

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
            res = ev.evaluate(model, tok, retain_results=m["retain_results"], fmt=fmt)
            if cfg.attacks.names:  # the run's recovery attacks (the `robust` fitness): the references too
                from .unlearn import _add_attacks

                _add_attacks(res, model, tok, fmt, cfg, m["source"], idx, m["retain_results"])
            out[name] = res["summary"]
        return Reference(out["target"], out.get("retain"))

    def run(self, prepared: TofuPrepared, run: MethodRun, *, part: str = "all", fraction: float | None = None,
            seed: int | None = None, run_dir: str | Path | None = None, stage1_epochs: int = 0,
            on_stage: StageHook | None = None) -> RunResult:
        """`run_unlearning` on the run's config, built in memory (`unlearn.run_config`: the options,
        the run's settings, the method resolved once). The full resolved config is written to
        RUN_DIR/unlearn_config.yaml, so that `evounlearn unlearn --method M --config
        RUN_DIR/unlearn_config.yaml` (+ `--loss-file RUN_DIR/loss.py` for a loss program)
        reproduces the run."""
        rd = Path(run_dir) if run_dir else default_run_dir(UnlearnConfig(method=run.method))
        rd.mkdir(parents=True, exist_ok=True)
        cfg = run_config(run, prepared.layers, part=part, seed=seed, fraction=fraction, run_dir=rd)
        save_run_config(cfg, rd / "unlearn_config.yaml")
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
    # options under the user's: the `-large` benchmarks' size (only `prepare.*` keys: the data and
    # the target / oracle recipe)
    preset: Mapping[str, Any] = {}
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

    def setting_layers(self, options: Mapping[str, Any] | None) -> list[dict[str, Any]]:
        """The options as layers (merged in order against `UnlearnConfig`): this benchmark's size
        preset under them (the user's options win), its generator setting over them
        (ConfigError on a conflicting one)."""
        opts = dict(options or {})
        layers = [dict(self.preset), opts] if self.preset else [opts]
        if not self.setting:
            return layers
        self._check_setting(((opts.get("prepare") or {}).get("generated") or {}).get("setting"))
        if str(opts.get("data", "generated")) != "generated":
            raise ConfigError(f"benchmark {self.name} runs on generated data only, not data={opts['data']!r}")
        return [*layers, {"prepare": {"generated": {"setting": self.setting}}}]

    def _overrides(self, overrides: list[str], key: str) -> list[str]:
        """key=value overrides with the size preset first (the user's win) and the setting appended
        (last, so it is the one applied). `key` is the setting's key in the command's config, so
        its prefix says where the preset's `prepare.` options sit there."""
        prefix = key[: -len("generated.setting")]
        preset = [f"{prefix}{k[len('prepare.'):]}={v}" for k, v in _flat(self.preset)] if self.preset else []
        overrides = [*preset, *overrides]
        if not self.setting:
            return list(overrides)
        self._check_setting(parse_overrides(list(overrides)).get(key))
        return [*overrides, f"{key}={self.setting}"]

    def prepare(self, options: Mapping[str, Any] | None = None) -> TofuPrepared:
        return self._prepared(self.setting_layers(options))

    def cli_prepare(self, config: str | None, overrides: list[str], force: bool = False, *,
                    export: str | None = None, import_from: str | None = None) -> Any:
        return super().cli_prepare(config, self._overrides(overrides, "generated.setting"), force,
                                   export=export, import_from=import_from)

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


def _flat(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """[("a.b.c", value), ...] of a nested mapping."""
    out: list[tuple[str, Any]] = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", v))
    return out


# The resolving size (benchmarks/results/noise.json): 4x the authors and holdout authors of the
# default, so each forget part has 80 rows and the holdout 160 (20 and 40 at the default), which
# halves both noise sources of a candidate's fitness (training seed and which rows are scored); the
# target is trained long enough to still memorise them. Chosen from the noise datasheet
# (`python benchmarks/noise.py`), not tuned to make any loss win.
LARGE_PRESET: dict[str, Any] = {"prepare": {"generated": {"authors": 160, "holdout_authors": 16},
                                            "train": {"epochs": 32}}}


def _large(base: type[GeneratedBenchmark]) -> type[GeneratedBenchmark]:
    """`<base>-large`: the same setting at the resolving size."""
    attrs = {"name": f"{base.name}-large", "aliases": (), "preset": LARGE_PRESET,
             "description": f"{base.description}; at the resolving size (80 forget rows per part, 160 holdout rows)"}
    return register_benchmark(type(f"{base.__name__.removesuffix('Benchmark')}LargeBenchmark", (base,), attrs))


GeneratedLargeBenchmark = _large(GeneratedBenchmark)
EntangledLargeBenchmark = _large(EntangledBenchmark)
PartialLargeBenchmark = _large(PartialBenchmark)
ParaphraseLargeBenchmark = _large(ParaphraseBenchmark)

