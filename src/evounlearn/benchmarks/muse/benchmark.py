"""The MUSE-News benchmark (protocol: `benchmarks.base.Benchmark`): unlearning runs and fitnesses.

Unlearning (`unlearn_muse`): forget rows = the forget corpus rows, retain rows = the retain corpus
rows (labels on every token: raw-text language modelling), any registered method (NPO, UnDIAL,
..., `evolved`) through `training.loop.Unlearner`, with this setting's per-method defaults
(`benchmarks/muse.yaml`, a layer of `training.resolve`).

Parts (held-out selection for the search): ``part="search"`` keeps the first half of every
forget-side set (verbmem, knowmem forget with its sentences, privleak forget and holdout),
``"report"`` the second half (`benchmarks.parts`); a run unlearns and is scored on its half only, the retain side stays
whole. The target's and the oracle's metrics on each part are evaluated once and cached
(`MusePrepared.reference`).

Fitnesses (docs/FITNESS.md; the utility is KnowMem_r): `evomu` (the EvoMU paper's, the default):
``0.5 * mean(1 - VerbMem_f, 1 - KnowMem_f, 1 / (1 + |PrivLeak| / 100)) + 0.5 * KnowMem_r``
(`evaluation.muse_eval.muse_fitness`); `calibrated`: ``(1 - 2 |AUC_MinK(forget vs holdout) - 0.5|)
* min(1, KnowMem_r / KnowMem_r_target)`` (MUSE's holdout is raw text: no ROUGE / Prob
counterpart, so the membership-inference gap is the only forget term).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...data.prompting import PromptFormatter
from ...evaluation.muse_eval import muse_fitness
from ...training.resolve import MethodRun, method_run
from ..base import Benchmark, FitnessSpec, Reference, RunResult, StageHook, metric, register_benchmark
from ..fitness import calibration, mia_gap, relative_utility
from ..parts import check_part
from ..runs import GenericCommands
from ..text import (
    load_model,
    setting_config,
    unlearn_rows,
    write_run_files,
)
from .config import MuseConfig, default_muse_source
from .material import load_material
from .prepare import SUMMARY_KEYS, MusePrepared, evaluate_on_material, prepare_muse

YAML = Path(__file__).resolve().parents[1] / "muse.yaml"  # per-method defaults of this setting (training.resolve)


def unlearn_muse(prepared: MusePrepared, method: str | MethodRun | dict[str, Any], *,
                 loss: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
                 part: str = "all", fraction: float = 0.5, run_dir: str | Path | None = None,
                 evaluate: bool = True, threads: int = 0, stage1_epochs: int = 0,
                 on_stage: StageHook | None = None) -> dict[str, Any]:
    """Unlearn the forget corpus (of one part) from the prepared target with one method; returns
    ``{"summary", "results", "train", "model"}`` (results = the full MUSE evaluation on that part,
    per-example values included; PrivLeak relative to the retain oracle on the same items).

    `on_stage(model, evaluate) -> summary` runs after epoch `stage1_epochs` (staged evaluation;
    it may call `evaluate(model)`, the same evaluation, or raise to stop)."""
    if threads:
        torch.set_num_threads(threads)
    check_part(part)
    run = method_run(method, loss, train)
    model, tok = load_model(prepared.target)
    rows = prepared.rows(tok, part, fraction)
    material = prepared.material.part(part, fraction)
    auc_ref = float(prepared.reference(part, fraction)["retain"]["privleak"]["auc"])
    fmt = PromptFormatter(tok, max_length=prepared.cfg.context)

    def eval_now(m: Any) -> dict[str, Any]:
        return evaluate_on_material(m, tok, material, prepared.cfg, auc_ref=auc_ref)["summary"]

    during = None if on_stage is None else (lambda m: on_stage(m, eval_now))
    model, record = unlearn_rows(model, fmt, run, rows.forget, rows.retain, benchmark_yaml=MuseBenchmark().method_yaml(),
                                 base_train={"max_length": prepared.cfg.context}, run_dir=run_dir,
                                 stage1_epochs=stage1_epochs, evaluate=during)
    out: dict[str, Any] = {"train": record, "part": part}
    if evaluate:
        res = evaluate_on_material(model, tok, material, prepared.cfg, auc_ref=auc_ref)
        out.update(results=res, summary=res["summary"])
    out["model"] = model
    return out



def muse_benchmark_fitness(metrics: Mapping[str, Any], target_metrics: Mapping[str, Any] | None = None) -> float:
    """The EvoMU paper's MUSE fitness (the target is not needed)."""
    return float(muse_fitness(metrics))


def muse_calibrated_fitness(metrics: Mapping[str, Any], target_metrics: Mapping[str, Any] | None = None) -> float:
    """`calibrated` (docs/FITNESS.md): the privleak forget texts should be as (un)familiar as the
    holdout texts (Min-40% AUC near 0.5, either direction), times KnowMem_r relative to the target."""
    return (calibration([mia_gap(metric(metrics, "privleak_auc"))])
            * relative_utility(metrics, target_metrics, "knowmem_r"))


MUSE_FITNESSES = {
    "evomu": FitnessSpec("evomu", muse_benchmark_fitness, "knowmem_r",
                         "0.5 * mean(1 - VerbMem_f, 1 - KnowMem_f, 1 / (1 + |PrivLeak| / 100)) + 0.5 * KnowMem_r"),
    "calibrated": FitnessSpec("calibrated", muse_calibrated_fitness, "knowmem_r",
                              "(1 - 2 * |AUC_MinK(forget vs holdout) - 0.5|) * min(1, KnowMem_r / KnowMem_r_target)",
                              needs_target_utility=True),
}


@register_benchmark
class MuseBenchmark(GenericCommands, Benchmark):
    name = "muse-news"
    aliases = ("muse",)
    description = ("MUSE-News, tiny setting: VerbMem, KnowMem forget/retain, PrivLeak vs the retain oracle")
    fitnesses = MUSE_FITNESSES
    default_fitness = "evomu"
    metric_keys = SUMMARY_KEYS
    yaml_path = YAML
    prompt_notes = (
        "MUSE: forget a corpus (news articles or books) while keeping knowledge of a retain corpus. "
        "PrivLeak should be close to 0: strongly negative means over-unlearning, "
        "strongly positive means under-unlearning."
    )
    prompt_guidance = (
        "- Forget metrics high (VerbMem_f, KnowMem_f): forget harder (a larger forget weight, a "
        "sharper penalty, more epochs).",
        "- Utility low (KnowMem_r): protect retention (a stronger retain term, anchor the retain "
        "log-probs to their reference, fewer epochs).",
        "- |PrivLeak| large: use smoother penalties (softplus / sigmoid instead of hinges and "
        "unbounded terms, a smaller scale, fewer epochs); a very negative PrivLeak means "
        "over-unlearning.",
    )

    def check_data(self, options: Mapping[str, Any] | None = None) -> None:
        """Every MUSE subset the setting reads from a local folder (the loaders check each row);
        a Hub dataset is checked as it loads."""
        from ...data.muse import _is_hub_id

        cfg = setting_config(MuseConfig, options)
        if not _is_hub_id(str(cfg.source or default_muse_source())):
            load_material(cfg)

    def prepare(self, options: Mapping[str, Any] | None = None) -> MusePrepared:
        prepared = prepare_muse(setting_config(MuseConfig, options))
        prepared.options = dict(options or {})
        return prepared

    def reference(self, prepared: MusePrepared, part: str = "all", fraction: float | None = None) -> Reference:
        ref = prepared.reference(part, prepared.fraction(fraction))
        return Reference(ref["target"]["summary"], ref["retain"]["summary"] if ref.get("retain") else None)

    def run(self, prepared: MusePrepared, run: MethodRun, *, part: str = "all", fraction: float | None = None,
            seed: int | None = None, run_dir: str | Path | None = None, stage1_epochs: int = 0,
            on_stage: StageHook | None = None) -> RunResult:
        run = prepared.method_run(run, seed)
        res = unlearn_muse(prepared, run, part=part, fraction=prepared.fraction(fraction), run_dir=run_dir,
                           stage1_epochs=stage1_epochs, on_stage=on_stage)
        result = RunResult(res["summary"], res["results"], res["train"], float(res["results"]["eval_seconds"]),
                           res["train"].get("epochs"))
        write_run_files(run_dir, result)
        return result
