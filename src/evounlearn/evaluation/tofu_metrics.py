"""The TOFU metric registry, in open-unlearning's spirit: a metric is one function plus one
registration declaring what it needs; `tofu_eval.TofuEvaluator.evaluate` loops over the configured
metrics, computing each input once, on first need.

A metric function takes the evaluation's `MetricContext` and returns its entries by key
(`{"agg": x, "values": {index: v}, ...}`, docs/ARCHITECTURE.md "Conventions"): usually one, its
own name; a group (model utility and its nine components) returns several. What it needs:

- inputs (`INPUTS`), computed once by the evaluator and shared: the forget rows scored
  (`forget_scored`, `model_io.ScoredAnswer`: `.answer` without EOS, `.with_eos`) and greedily
  generated (`forget_generations`), their truth ratios (`forget_truth_ratios`), the same for the
  holdout rows (`holdout_scored`, `holdout_generations`), and the retain oracle's forget truth
  ratios on the same rows (`retain_truth_ratios`, None without the oracle's results), the GradNorm
  attack's per-row gradient norms (`forget_gradnorm`, `holdout_gradnorm`);
- other metrics, by name: evaluated first, their entries read from `ctx.out`.

`full=True` leaves a metric out of a lean evaluation (`EvalConfig.lean`, what the search scores);
`mia=True` needs `EvalConfig.mia`. `table` keys are the ones the leaderboards show (the TOFU-shaped
benchmarks' `metric_keys`). Torch-free: the command line reads `table_keys()` before any import
of torch; the functions import the numeric code (`evaluation.metrics`) when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import ConfigError

#: the inputs a metric may need (computed once per evaluation by the evaluator)
INPUTS = ("forget_scored", "forget_generations", "forget_truth_ratios", "holdout_scored",
          "holdout_generations", "retain_truth_ratios", "forget_gradnorm", "holdout_gradnorm")

#: the attacks PrivLeak may be computed from (`EvalConfig.privleak_attack`): `mia_<name>` AUCs
PRIVLEAK_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm")


class MetricContext(Protocol):
    """What a metric function reads (`tofu_eval.Evaluation` implements it)."""

    cfg: Any  # evaluation.config.EvalConfig
    out: dict[str, Any]  # the entries computed so far, by key
    forget: list[dict[str, Any]]  # the forget rows evaluated (the part's), `forget_index` their indices
    forget_index: list[int]
    holdout: list[dict[str, Any]]
    retain_results: Mapping[str, Any] | None  # the retain oracle's saved results (None: none)

    def need(self, name: str) -> Any:
        """An input of `INPUTS`, computed on first need."""

    def split_scores(self, name: str) -> dict[str, Any]:
        """Prob, ROUGE and truth ratio entries of one model-utility split (retain, real_authors,
        world_facts)."""

    def reference_scores(self) -> tuple[Any, Any] | None:
        """The reference model's average NLLs on the forget and holdout rows (None without one)."""


MetricFn = Callable[[MetricContext], dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class MetricSpec:
    name: str
    fn: MetricFn
    needs: tuple[str, ...] = ()  # inputs (INPUTS) and other metrics (by name) it reads
    full: bool = False  # only in a full evaluation (left out when EvalConfig.lean)
    mia: bool = False  # only with EvalConfig.mia
    table: tuple[str, ...] = ()  # its keys shown in leaderboards and reports


TOFU_METRICS: dict[str, MetricSpec] = {}


def register_metric(name: str, *, needs: Sequence[str] = (), full: bool = False, mia: bool = False,
                    table: Sequence[str] = ()) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register `fn` as TOFU metric `name` (evaluated in registration order)."""
    def deco(fn: MetricFn) -> MetricFn:
        unknown = [n for n in needs if n not in INPUTS and n not in TOFU_METRICS]
        if unknown:  # a metric needed must be registered before: the registration order is the evaluation's
            raise ValueError(f"metric {name}: unknown needs {unknown} (inputs: {', '.join(INPUTS)})")
        TOFU_METRICS[name] = MetricSpec(name, fn, tuple(needs), full, mia, tuple(table))
        return fn

    return deco


def configured(names: Sequence[str] | None, cfg: Any) -> list[MetricSpec]:
    """The metrics to evaluate, in order: `names` (None: every registered one) with what they
    need, less those the config turns off (`lean`, `mia`); an unknown name is a ConfigError."""
    unknown = [n for n in names or () if n not in TOFU_METRICS]
    if unknown:
        raise ConfigError(f"unknown TOFU metric(s) {', '.join(unknown)} (known: {', '.join(TOFU_METRICS)})")
    wanted = set(TOFU_METRICS if names is None else names)
    for spec in reversed(list(TOFU_METRICS.values())):  # a wanted metric's needs are wanted too
        if spec.name in wanted:
            wanted |= {n for n in spec.needs if n in TOFU_METRICS}
    return [s for s in TOFU_METRICS.values()
            if s.name in wanted and not (s.full and cfg.lean) and not (s.mia and not cfg.mia)]


def table_keys() -> tuple[str, ...]:
    """The keys leaderboards show, in the metrics' order."""
    return tuple(k for spec in TOFU_METRICS.values() for k in spec.table)


# ------------------------------------------------------------------------------------------------
# entries


def values(arr: Sequence[Any], keys: Sequence[int] | None = None) -> dict[str, float | None]:
    """Per-example values by example index (NaN and None stored as None)."""
    import math

    keys = list(range(len(arr))) if keys is None else keys
    return {str(k): (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
            for k, v in zip(keys, arr)}


def entry(agg: float | None, vals: Sequence[Any] | None = None, keys: Sequence[int] | None = None,
          **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"agg": None if agg is None else float(agg)}
    if vals is not None:
        e["values"] = values(vals, keys)
    e.update(extra)
    return e


def avg_nlls(scored: Sequence[Any]) -> Any:
    import numpy as np

    return np.array([s.avg_nll for s in scored], dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# per-example scores from scored answers (`model_io.ScoredAnswer`)


def memorization_scores(scored: Sequence[Any], es_reference_quirk: bool = False) -> tuple[list[float], list[float]]:
    """Per-example (extraction strength, exact memorisation) on the answer tokens without the EOS
    prediction, from the teacher-forced argmax hits."""
    from . import metrics as M

    answers = [s.answer for s in scored]
    es = [M.extraction_strength(a.predictions, a.labels, reference_quirk=es_reference_quirk) for a in answers]
    em = [M.exact_memorization(a.predictions, a.labels) for a in answers]
    return es, em


def _padded(rows: Sequence[Any]) -> tuple[Any, Any]:
    """Ragged per-example arrays as a zero-padded [B, T] matrix and its mask."""
    import numpy as np

    width = max((len(r) for r in rows), default=0)
    values = np.zeros((len(rows), max(width, 1)))
    mask = np.zeros(values.shape, dtype=bool)
    for i, r in enumerate(rows):
        values[i, : len(r)] = r
        mask[i, : len(r)] = True
    return values, mask


def with_eos(scored: Sequence[Any]) -> tuple[Any, Any]:
    """The log-probs of the answer tokens and the EOS prediction, padded, with their mask."""
    return _padded([s.with_eos.logps for s in scored])


def mia_scores(scored: Sequence[Any], texts: list[str], k: float) -> dict[str, Any]:
    """Per-example loss-like MIA scores of one split, each on its own token set: LOSS and zlib
    with the EOS prediction, Min-K% and Min-K%++ without it."""
    from . import metrics as M

    eos = with_eos(scored)
    answer = _padded([s.answer.logps for s in scored])
    z = _padded([s.answer.z for s in scored])
    return {
        "mia_loss": M.mia_loss_scores(*eos),
        "mia_zlib": M.mia_zlib_scores(*eos, texts),
        "mia_min_k": M.mia_min_k_scores(*answer, k),
        "mia_min_k_plus_plus": M.mia_min_k_scores(*z, k),
    }


# ------------------------------------------------------------------------------------------------
# the metrics (docs/METRICS.md lists each one's token set and source)


@register_metric("model_utility", table=("model_utility",))
def model_utility(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """MU: the harmonic mean of Prob, ROUGE and truth ratio on retain, real authors, world facts."""
    from . import metrics as M

    out: dict[str, dict[str, Any]] = {}
    for name in ("retain", "real_authors", "world_facts"):
        out.update(ctx.split_scores(name))
    comps = {k: e["agg"] for k, e in out.items()}
    out["model_utility"] = entry(M.model_utility(comps), None, components=comps)
    return out


@register_metric("forget_rouge", needs=("forget_generations",), table=("forget_rouge",))
def forget_rouge(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    import numpy as np

    from . import metrics as M

    gen = ctx.need("forget_generations")
    rouge = M.rouge_l_recall(gen, [r["answer"] for r in ctx.forget])
    return {"forget_rouge": entry(float(np.mean(rouge)), rouge, ctx.forget_index, generations=gen)}


@register_metric("forget_prob", needs=("forget_scored",), table=("forget_prob",))
def forget_prob(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    import numpy as np

    from . import metrics as M

    e = entry(None, M.length_normalized_prob(avg_nlls(ctx.need("forget_scored"))), ctx.forget_index)
    e["agg"] = float(np.mean(list(e["values"].values())))
    return {"forget_prob": e}


@register_metric("forget_truth_ratio", needs=("forget_truth_ratios",))
def forget_truth_ratio(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    from . import metrics as M

    r = ctx.need("forget_truth_ratios")
    return {"forget_truth_ratio": entry(M.truth_ratio_forget(r), r, ctx.forget_index)}


@register_metric("forget_quality", needs=("forget_truth_ratios", "retain_truth_ratios"), table=("forget_quality",))
def forget_quality(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """The KS test of the forget truth ratios against the retain oracle's (None without it)."""
    from . import metrics as M

    ref = ctx.need("retain_truth_ratios")
    return {"forget_quality": entry(None if ref is None else M.forget_quality(ctx.need("forget_truth_ratios"), ref))}


@register_metric("memorization", needs=("forget_scored",), full=True)
def memorization(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """Extraction strength and exact memorisation (`tofu_eval.memorization_scores`)."""
    import numpy as np

    es, em = memorization_scores(ctx.need("forget_scored"), ctx.cfg.es_reference_quirk)
    return {"extraction_strength": entry(float(np.mean(es)), es, ctx.forget_index),
            "exact_memorization": entry(float(np.mean(em)), em, ctx.forget_index)}


@register_metric("holdout", needs=("holdout_scored", "holdout_generations"), table=("holdout_rouge", "holdout_prob"))
def holdout(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """holdout_prob and holdout_rouge, as forget_prob / forget_rouge, on every holdout row whatever
    the forget part (the reference of the `calibrated` fitness; docs/FITNESS.md)."""
    import numpy as np

    from . import metrics as M

    prob = M.length_normalized_prob(avg_nlls(ctx.need("holdout_scored")))
    gen = ctx.need("holdout_generations")
    rouge = M.rouge_l_recall(gen, [r["answer"] for r in ctx.holdout])
    return {"holdout_prob": entry(float(np.mean(prob)), prob),
            "holdout_rouge": entry(float(np.mean(rouge)), rouge, generations=gen)}


@register_metric("gap_se", needs=("forget_rouge", "forget_prob", "holdout"))
def gap_se(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """The sampling scale of each forget-vs-holdout gap (docs/FITNESS.md)."""
    from . import metrics as M

    out = {}
    for key in ("rouge", "prob"):
        f_vals, h_vals = (list(ctx.out[f"{side}_{key}"]["values"].values()) for side in ("forget", "holdout"))
        out[f"forget_{key}_gap_se"] = entry(M.se_difference(f_vals, h_vals))
    return out


@register_metric("mia", needs=("forget_scored", "holdout_scored"), mia=True)
def mia(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """The membership-inference attacks, forget (members) vs holdout rows (GradNorm unless
    `eval.gradnorm=false`), and PrivLeak against the retain oracle's AUC of the same attack
    (`eval.privleak_attack`, Min-K% by default); lean: the LOSS attack only (what the calibrated
    fitness reads)."""
    from . import metrics as M

    f_scored, h_scored = ctx.need("forget_scored"), ctx.need("holdout_scored")
    res: dict[str, dict[str, Any]] = {}

    def pack(name: str, sf: Any, sh: Any) -> None:
        res[name] = {"agg": float(M.mia_auc(sf, sh)), "values": {"forget": values(sf, ctx.forget_index),
                                                                  "holdout": values(sh)}}

    if ctx.cfg.lean:
        pack("mia_loss", M.mia_loss_scores(*with_eos(f_scored)), M.mia_loss_scores(*with_eos(h_scored)))
        return res
    f_mia = mia_scores(f_scored, [r["answer"] for r in ctx.forget], ctx.cfg.min_k)
    h_mia = mia_scores(h_scored, [r["answer"] for r in ctx.holdout], ctx.cfg.min_k)
    for name in f_mia:
        pack(name, f_mia[name], h_mia[name])
    if ctx.cfg.gradnorm:
        pack("mia_gradnorm", ctx.need("forget_gradnorm"), ctx.need("holdout_gradnorm"))
    ref = ctx.reference_scores()
    if ref is not None:
        pack("mia_reference", M.mia_reference_scores(avg_nlls(f_scored), ref[0]),
             M.mia_reference_scores(avg_nlls(h_scored), ref[1]))
    key = f"mia_{check_privleak_attack(ctx.cfg.privleak_attack)}"
    if key not in res:
        raise ConfigError(f"privleak_attack {ctx.cfg.privleak_attack!r}: {key} is off in this evaluation "
                          "(eval.gradnorm=false)")
    auc_ref = 0.5
    retain = ctx.retain_results
    if retain is not None and key in retain.get("metrics", {}):
        auc_ref = retain["metrics"][key]["agg"]
    res["privleak"] = {"agg": M.privleak(res[key]["agg"], auc_ref), "auc_ref": auc_ref, "attack": key}
    return res


def check_privleak_attack(name: str) -> str:
    """`name` if PrivLeak can use that attack, else a ConfigError listing them."""
    if name not in PRIVLEAK_ATTACKS:
        raise ConfigError(f"unknown privleak_attack {name!r} (choose {', '.join(PRIVLEAK_ATTACKS)})")
    return name


@register_metric("mia_loss_smd", needs=("mia",), mia=True)
def mia_loss_smd(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """The `calibrated` fitness's membership term: the LOSS scores' standardised difference forget
    vs holdout and its sampling scale, steadier than the AUC (docs/FITNESS.md)."""
    from . import metrics as M

    scores = ctx.out["mia_loss"]["values"]
    sf, sh = list(scores["forget"].values()), list(scores["holdout"].values())
    if len(sf) < 2 or len(sh) < 2:
        return {}
    d, se = M.standardized_difference(sf, sh)
    d = max(-1e6, min(1e6, d))  # two constant samples give +-inf: JSON has no inf
    return {"mia_loss_smd": {"agg": float(d)}, "mia_loss_smd_se": {"agg": float(se)}}
