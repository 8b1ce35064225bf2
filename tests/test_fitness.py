"""The benchmarks' fitnesses (docs/FITNESS.md): `calibrated` and `oracle` reward forgetting down to
the level of never-seen data, not beyond it; a destroyed model scores low; the retain oracle ranks
at the top on the tiny generated benchmark. Also: selecting a fitness by name, and the generated
settings registered as benchmarks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from evounlearn.benchmarks import (
    FAILED,
    all_benchmarks,
    compute_fitness,
    fitness_name,
    fitness_values,
    get_benchmark,
)
from evounlearn.errors import ConfigError

TARGET = {"model_utility": 0.8}
HOLDOUT = {"holdout_rouge": 0.3, "holdout_prob": 0.2}


def tofu_summary(rouge: float, prob: float, auc: float, mu: float = 0.8, fq: float | None = None,
                 smd: float | None = None, se: float = 0.27) -> dict[str, Any]:
    """A summary; `smd` (the LOSS scores' standardised difference) defaults to the one a normal
    distribution shift with this AUC gives (AUC = Phi(d / sqrt 2))."""
    from statistics import NormalDist

    if smd is None:
        smd = math.sqrt(2.0) * NormalDist().inv_cdf(min(max(auc, 1e-9), 1 - 1e-9))
    return {**HOLDOUT, "forget_rouge": rouge, "forget_prob": prob, "mia_loss": auc, "model_utility": mu,
            "forget_quality": fq, "mia_loss_smd": smd, "mia_loss_smd_se": se}


def cal(s: dict[str, Any]) -> float:
    return compute_fitness("generated", s, TARGET, fitness="calibrated")


def test_calibrated_penalises_forgetting_beyond_the_holdout_level_and_destruction() -> None:
    like_unseen = tofu_summary(0.3, 0.2, 0.5)
    beyond = tofu_summary(0.0, 0.01, 0.05)  # forgets more than a model that never saw the data
    remembers = tofu_summary(0.95, 0.9, 0.97)
    destroyed = tofu_summary(0.3, 0.2, 0.5, mu=0.02)

    assert cal(like_unseen) == pytest.approx(1.0)
    assert cal(beyond) < cal(like_unseen) and cal(remembers) < cal(like_unseen)
    assert cal(destroyed) <= 0.03
    # the problem it fixes: EvoMU's formula prefers the model that forgets beyond the holdout level
    assert compute_fitness("generated", beyond, fitness="evomu") > compute_fitness("generated", like_unseen,
                                                                                  fitness="evomu")
    # utility relative to the target, capped at 1; without the target's utility it cannot be scored
    assert cal(tofu_summary(0.3, 0.2, 0.5, mu=0.4)) == pytest.approx(0.5)
    assert cal(tofu_summary(0.3, 0.2, 0.5, mu=0.95)) == pytest.approx(1.0)
    assert compute_fitness("generated", like_unseen, None, fitness="calibrated") == FAILED
    # without the MIAs (eval.mia: false) the two side gaps remain: ROUGE 0.3 -> 0 is the whole way
    # down (1.0), Prob 0.2 -> 0.01 is 0.19 / 0.2 of it
    no_mia = {k: v for k, v in beyond.items() if not k.startswith("mia_loss")}
    assert cal(no_mia) == pytest.approx(1.0 - (1.0 + 0.19 / 0.2) / 2)


def test_calibrated_is_symmetric_about_the_holdout_level() -> None:
    """Version 2: each gap is a fraction of how far it can go on its side of the holdout level, so
    total over-forgetting and total under-forgetting score alike (both 0 at full utility), and the
    same fraction of the way scores the same on either side (version 1 scored total
    over-forgetting ~0.58 and total remembering ~0.08 on the generated benchmark)."""
    total_over = tofu_summary(0.0, 0.0, 0.0, smd=-8.0)
    total_under = tofu_summary(1.0, 1.0, 1.0, smd=8.0)
    assert cal(total_over) == pytest.approx(0.0) and cal(total_under) == pytest.approx(0.0)
    # half way down (ROUGE 0.15 of 0.3, Prob 0.1 of 0.2) vs half way up (0.65 of 0.3..1, 0.6 of 0.2..1)
    half_down = tofu_summary(0.15, 0.1, 0.5, smd=-1.27)
    half_up = tofu_summary(0.65, 0.6, 0.5, smd=1.27)
    assert cal(half_down) == pytest.approx(cal(half_up)) and 0.4 < cal(half_up) < 0.6
    # monotone on each side: closer to the level scores higher
    ladder = [cal(tofu_summary(r, 0.2, 0.5)) for r in (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)]
    assert ladder == sorted(ladder[:4]) + sorted(ladder[3:], reverse=True)[1:]
    assert max(ladder) == ladder[3]


def test_calibrated_membership_term_forgives_sampling_noise() -> None:
    """The membership term reads the LOSS scores' standardised difference d: |d| within its
    sampling scale se costs nothing (an exact unlearner is not charged for the noise of 20-80 rows),
    the rest counts linearly up to |d| = se + 2 (a total leak), in either direction."""
    from evounlearn.benchmarks.fitness import smd_gap

    assert smd_gap(0.2, 0.27) == 0.0 and smd_gap(-0.27, 0.27) == 0.0
    assert smd_gap(1.27, 0.27) == pytest.approx(0.5) and smd_gap(-1.27, 0.27) == pytest.approx(0.5)
    assert smd_gap(5.0, 0.27) == 1.0 and smd_gap(-50.0, 0.27) == 1.0
    assert smd_gap(1.0) == pytest.approx(0.5)  # without se: the plain scale
    base = dict(rouge=0.3, prob=0.2, auc=0.5)
    assert cal(tofu_summary(**base, smd=0.1)) == pytest.approx(1.0)
    assert cal(tofu_summary(**base, smd=1.27)) == pytest.approx(1.0 - 0.5 / 3)


def test_side_gap_edges() -> None:
    from evounlearn.benchmarks.fitness import side_gap

    assert side_gap(0.3, 0.3) == 0.0 and side_gap(1.0, 0.3) == 1.0 and side_gap(0.0, 0.3) == 1.0
    assert side_gap(0.65, 0.3) == pytest.approx(0.5) and side_gap(0.15, 0.3) == pytest.approx(0.5)
    assert side_gap(0.5, 1.0) == pytest.approx(0.5) and side_gap(1.0, 1.0) == 0.0  # level at the top
    assert side_gap(0.5, 0.0) == pytest.approx(0.5) and side_gap(0.0, 0.0) == 0.0  # level at the bottom
    assert side_gap(1.7, 0.3) == 1.0 and side_gap(-0.2, 0.3) == 1.0  # clamped first
    # the part within the difference's standard error is forgiven, on either side
    assert side_gap(0.33, 0.3, se=0.05) == 0.0 and side_gap(0.27, 0.3, se=0.05) == 0.0
    assert side_gap(0.1, 0.3, se=0.05) == pytest.approx(0.15 / 0.3)
    assert side_gap(0.0, 0.3, se=0.05) == pytest.approx(0.25 / 0.3) and side_gap(1.0, 0.3, se=0.05) < 1.0


def test_se_difference_matches_its_formula() -> None:
    from evounlearn.evaluation.metrics import se_difference

    a, b = [0.0, 1.0, 0.5, 0.5], [0.2, 0.4, 0.6]
    va, vb = sum((x - 0.5) ** 2 for x in a) / 3, sum((x - 0.4) ** 2 for x in b) / 2
    assert se_difference(a, b) == pytest.approx(math.sqrt(va / 4 + vb / 3))
    assert se_difference([1.0], b) is None


def test_standardized_difference_matches_its_formula() -> None:
    import numpy as np

    from evounlearn.evaluation.metrics import MetricInputError, standardized_difference

    f, h = np.array([0.1, 0.3, 0.2, 0.4]), np.array([2.0, 2.5, 1.5, 3.0, 2.0])
    d, se = standardized_difference(f, h)
    pooled = math.sqrt((f.var(ddof=1) + h.var(ddof=1)) / 2)
    assert d == pytest.approx((h.mean() - f.mean()) / pooled) and se == pytest.approx(math.sqrt(1 / 4 + 1 / 5))
    assert standardized_difference(h, f)[0] == pytest.approx(-d)  # forgotten beyond unseen: negative
    assert standardized_difference([1.0, 1.0], [1.0, 1.0])[0] == 0.0
    assert standardized_difference([1.0, 1.0], [2.0, 2.0])[0] == math.inf
    with pytest.raises(MetricInputError):
        standardized_difference([1.0], [1.0, 2.0])


def test_calibrated_v2_records_its_version() -> None:
    from evounlearn.benchmarks import get_fitness

    assert get_fitness("generated", "calibrated").version == 2
    assert get_fitness("generated", "evomu").version == 1


def test_oracle_fitness_follows_forget_quality_log_scaled() -> None:
    def orc(fq: float | None, mu: float = 0.8) -> float:
        return compute_fitness("tofu", tofu_summary(0.0, 0.0, 0.5, mu=mu, fq=fq), TARGET, fitness="oracle")

    assert orc(1.0) == pytest.approx(1.0)
    assert orc(1e-5) == pytest.approx(0.5)
    assert orc(0.5) > orc(0.01) > orc(1e-4) > orc(1e-12) == 0.0
    assert orc(1.0, mu=0.01) < 0.02
    assert orc(None) == FAILED  # no retain oracle's results: no forget quality


def test_muse_and_wmdp_calibrated() -> None:
    def muse(auc: float, know_r: float = 0.6) -> float:
        return compute_fitness("muse", {"privleak_auc": auc, "knowmem_r": know_r}, {"knowmem_r": 0.6},
                               fitness="calibrated")

    assert muse(0.5) == pytest.approx(1.0) and muse(0.1) < muse(0.4) and muse(0.95) < muse(0.6)
    assert muse(0.5, know_r=0.0) == 0.0

    target = {"forget_acc": 0.95, "retain_acc": 0.9}

    def wmdp(acc_w: float, acc_m: float = 0.9) -> float:
        return compute_fitness("wmdp", {"forget_acc": acc_w, "retain_acc": acc_m}, target, fitness="calibrated")

    assert wmdp(0.25) == pytest.approx(1.0) and wmdp(0.0) < wmdp(0.25) and wmdp(0.9) < wmdp(0.3)
    assert wmdp(0.25, acc_m=0.05) < 0.06


def test_fitness_selection_by_name_and_mode() -> None:
    from evounlearn.search.config import SearchConfig

    gen = get_benchmark("generated")
    assert set(gen.all_fitnesses()) == {"evomu", "calibrated", "oracle", "robust"} and gen.fitness.name == "evomu"
    assert fitness_name("generated", "", "ours") == "calibrated"
    assert fitness_name("generated", "", "evomu") == "evomu"
    assert fitness_name("wmdp", "", "evomu") == "wmdp"  # no evomu formula there: its default
    assert fitness_name("tests.fakes:FakeBenchmark", "", "ours") == "fake"  # a benchmark with one fitness
    assert SearchConfig(mode="evomu").check().fitness_name() == "evomu"
    assert SearchConfig(fitness="oracle").check().fitness_name() == "oracle"
    with pytest.raises(ConfigError, match="known: evomu, calibrated, oracle, robust"):
        SearchConfig(fitness="nope").check()
    vals = fitness_values("generated", tofu_summary(0.3, 0.2, 0.5), TARGET)
    assert set(vals) == {"fitness_evomu", "fitness_calibrated", "fitness_oracle", "fitness_robust"}
    assert vals["fitness_calibrated"] == pytest.approx(1.0) and vals["fitness_oracle"] is None
    assert vals["fitness_robust"] is None  # a run without attacks: nothing to score robustness on


def test_generated_settings_are_benchmarks(tmp_path: Path) -> None:
    from evounlearn.benchmarks.tofu import resolve_data
    from evounlearn.config import to_dict
    from tests.conftest import tiny_prepare_config

    names = all_benchmarks()
    for name in ("entangled", "partial", "paraphrase"):
        b = names[name]
        assert b.setting == name and name.upper() in b.prompt_notes and b.description
    pcfg = to_dict(tiny_prepare_config(tmp_path / "cache"))
    sources = {}
    for name in ("generated", "partial"):
        setting = get_benchmark(name).prepare({"prepare": pcfg})  # lazy: builds no model
        assert setting.cfg.prepare.generated.setting == ("disjoint" if name == "generated" else name)
        sources[name] = Path(resolve_data(setting.cfg.prepare))
    assert sources["generated"] != sources["partial"]
    meta = json.loads((sources["partial"] / "meta.json").read_text())
    assert meta["config"]["setting"] == "partial"
    forget = [json.loads(line) for line in (sources["partial"] / "forget10.json").read_text().splitlines()]
    base = [json.loads(line) for line in (sources["generated"] / "forget10.json").read_text().splitlines()]
    assert forget != base
    with pytest.raises(ConfigError, match="partial"):
        get_benchmark("partial").prepare({"prepare": {"generated": {"setting": "entangled"}}})


@pytest.fixture(scope="module")
def learned_prepared(tmp_path_factory):
    """The tiny benchmark trained long enough to learn it (MU ~0.95; the session's `tiny_prepared`
    model is undertrained: MU 0, ROUGE 0), ~15 s."""
    from evounlearn.benchmarks.tofu import prepare
    from evounlearn.training.finetune import FinetuneConfig
    from tests.conftest import tiny_prepare_config

    cfg = tiny_prepare_config(tmp_path_factory.mktemp("learned"), train=FinetuneConfig(epochs=40, batch_size=8,
                                                                                         lr=5e-3))
    return cfg, prepare(cfg)


def _destroy_with_grad_ascent(pcfg: Any, p: Any, run_dir: Path) -> dict[str, Any]:
    from evounlearn.benchmarks.tofu import build_config, run_unlearning

    cfg = build_config("grad_ascent", None, [f"model={p.target}", f"retain_results={p.retain_results}",
                                             f"run_dir={run_dir}", "train.lr=0.05", "train.epochs=3",
                                             "train.batch_size=2", "threads=1"])
    cfg.prepare, cfg.eval = pcfg, pcfg.eval
    return run_unlearning(cfg)["summary"]


@pytest.mark.slow
def test_retain_oracle_beats_the_target_on_the_session_benchmark(tiny_prepared) -> None:
    """On the session's tiny benchmark the models are undertrained (MU 0, ROUGE 0: no utility to
    lose, so a destroyed model cannot be told apart there; see the next test), but the oracle's
    forget rows already look more like its holdout rows than the target's do."""
    from evounlearn.benchmarks.tofu import summaries

    s = summaries(tiny_prepared[1])
    assert {"holdout_rouge", "holdout_prob"} <= set(s["target"])
    target, oracle = s["target"], s["retain"]
    for name in ("calibrated", "oracle"):
        assert compute_fitness("generated", oracle, target, fitness=name) > compute_fitness(
            "generated", target, target, fitness=name)


@pytest.mark.slow
def test_retain_oracle_scores_near_the_top_on_a_learned_tiny_benchmark(learned_prepared, tmp_path: Path) -> None:
    """The oracle's calibrated (and oracle) fitness >= the target's and >= a model destroyed by
    grad ascent (a few steps at a high lr), on a tiny benchmark the models did learn."""
    from evounlearn.benchmarks.tofu import summaries

    pcfg, p = learned_prepared
    s = summaries(p)
    target, oracle = s["target"], s["retain"]
    destroyed = _destroy_with_grad_ascent(pcfg, p, tmp_path / "ga")
    assert destroyed["model_utility"] < 0.5 * target["model_utility"]

    def fit(summary: dict[str, Any], name: str = "calibrated") -> float:
        return compute_fitness("generated", summary, target, fitness=name)

    assert fit(oracle) > 0.5
    assert fit(oracle) > fit(target) + 0.3 and fit(oracle) > fit(destroyed) + 0.3
    assert fit(oracle, "oracle") >= fit(destroyed, "oracle") and fit(oracle, "oracle") >= fit(target, "oracle")
    # what EvoMU's formula does with the same three models, for the record (not asserted: measured)
    print({n: (round(fit(m), 3), round(fit(m, "evomu"), 3)) for n, m in
           (("target", target), ("oracle", oracle), ("grad_ascent", destroyed))})


@pytest.mark.slow
def test_every_registered_benchmark_is_found_by_name_alone() -> None:
    """A lookup imports only the module `BUILTIN_MODULES` names for it: each module must list all
    the names it registers (a fresh process, so no other lookup has imported them first)."""
    import subprocess
    import sys

    code = ("from evounlearn.benchmarks.base import BUILTIN_MODULES, get_benchmark, all_benchmarks\n"
            "names = [n for ns in BUILTIN_MODULES.values() for n in ns]\n"
            "for n in ['entangled', 'partial', 'paraphrase', 'generated', 'muse-news', 'wmdp-synthetic']:\n"
            "    assert n in names, n\n"
            "    get_benchmark(n)\n"
            "registered = all_benchmarks()\n"
            "missing = [n for n, b in registered.items() if n not in names]\n"
            "assert not missing, missing\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
