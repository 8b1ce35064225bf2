"""Plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def fitness_plot(
    points: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, tuple[float, float | None]],
    path: str | Path,
    *,
    title: str = "fitness per generation",
    references: Mapping[str, float | None] | None = None,
    winner: int | Mapping[str, Any] | None = None,
) -> Path:
    """Fitness of every candidate per generation, the best so far, and the baselines' bands.

    `points`: {"id", "generation", "fitness", "passes_floor", "stage1_only", "failed"} per
    candidate, the fitness of its first search-part run (failed, or fitness -inf: counted in the
    title, not drawn); `baselines`: name -> (mean, std); `references`: name -> fitness (e.g.
    target, retain oracle), drawn as dotted lines; `winner`: its id, or {"id", "mean", "sd",
    "seeds"} (its multi-seed search-part mean, drawn as an error bar beside its star).

    The best-so-far curve and the winner's star show the same quantity (the first-seed fitness of
    the points), so the star always lies on or below the curve; the winner is chosen later by its
    multi-seed mean, which the legend gives.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3", "C4", "C5"])
    for i, (name, (mean, std)) in enumerate(sorted(baselines.items())):
        if mean is None or not math.isfinite(mean):
            continue
        col = colors[(i + 2) % len(colors)]
        s = std if std is not None and math.isfinite(std) else 0.0
        ax.axhspan(mean - s, mean + s, color=col, alpha=0.12, lw=0)
        ax.axhline(mean, color=col, lw=1.0, ls="--", label=f"{name} {mean:.3f}" + (f" ± {s:.3f}" if s else ""))
    for name, value in (references or {}).items():
        if value is not None and math.isfinite(value):
            ax.axhline(value, color="gray", lw=0.8, ls=":", label=f"{name} {value:.3f}")
    ok = [p for p in points if p.get("fitness") is not None and math.isfinite(p["fitness"])]
    failed = len([p for p in points if p.get("failed") or (p.get("fitness") is not None
                                                         and not math.isfinite(p["fitness"]))])
    full = [p for p in ok if not p.get("stage1_only")]
    stage1 = [p for p in ok if p.get("stage1_only")]
    passing = [p for p in full if p.get("passes_floor", True)]
    below = [p for p in full if not p.get("passes_floor", True)]
    if passing:
        ax.scatter([p["generation"] for p in passing], [p["fitness"] for p in passing], s=22, color=colors[0],
                   alpha=0.8, label="candidate", zorder=3)
    if below:
        ax.scatter([p["generation"] for p in below], [p["fitness"] for p in below], s=22, facecolors="none",
                   edgecolors="red", label="below utility floor", zorder=3)
    if stage1:
        ax.scatter([p["generation"] for p in stage1], [p["fitness"] for p in stage1], s=14, marker="v",
                   color="gray", alpha=0.6, label="stopped at stage 1 (stage-1 fitness)", zorder=2)
    if passing:
        gens = sorted({p["generation"] for p in ok})
        best, xs, ys = -math.inf, [], []
        for g in gens:
            vals = [p["fitness"] for p in passing if p["generation"] == g]
            if vals:
                best = max(best, max(vals))
            if math.isfinite(best):
                xs.append(g)
                ys.append(best)
        ax.plot(xs, ys, color=colors[1], lw=2, label="best so far (first-seed fitness, passing the floor)",
                zorder=4)
    _draw_winner(ax, full, winner)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (search part, first seed)")
    ax.set_title(title + (f"  [{failed} failed]" if failed else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _draw_winner(ax: Any, full: Sequence[Mapping[str, Any]], winner: int | Mapping[str, Any] | None) -> None:
    """The winner's star at its first-seed fitness (the curve's quantity) and, when it was re-run
    with several seeds, its mean ± sd beside it (the quantity it was selected by)."""
    if winner is None:
        return
    info: Mapping[str, Any] = winner if isinstance(winner, Mapping) else {"id": winner}
    w = [p for p in full if p.get("id") == info.get("id")]
    if not w:
        return
    g, first = w[0]["generation"], w[0]["fitness"]
    ax.scatter([g], [first], s=120, marker="*", color="gold", edgecolors="black",
               label=f"winner #{info['id']} (first-seed fitness)", zorder=5)
    mean, sd, seeds = info.get("mean"), info.get("sd"), int(info.get("seeds") or 0)
    if seeds > 1 and mean is not None and math.isfinite(mean):
        err = sd if sd is not None and math.isfinite(sd) else 0.0
        ax.errorbar([g + 0.15], [mean], yerr=[err], fmt="D", ms=5, color="black", capsize=3, zorder=5,
                    label=f"winner's mean ± sd over {seeds} seeds (selection)")
