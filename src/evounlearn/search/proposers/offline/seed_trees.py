"""The literature losses as loss trees, the offline proposer's starting points: GA, GradDiff,
NPO, SimNPO and EvoMU-style templates (written in the faithful interface, over mean answer
log-probs), and token-level templates for the extended interface, among them the token-weighted
methods WGA, SatImp and CE-U (their weights are grammar primitives, `tree.TOKEN_WEIGHTS`).
"""

from __future__ import annotations

from .tree import LossTree, rc


def _npo(beta: float = 0.1, alpha: float = 1.0) -> LossTree:
    # NPO: -(2/beta) logsigmoid(-beta (lp - ref)) = (2/beta) softplus(beta (lp - ref)); retain NLL.
    return LossTree(("*", rc(2.0 / beta), ("softplus", ("*", rc(beta), "dF"))), ("neg", "lpr"), rc(alpha), 5)


def _simnpo(beta: float = 4.5, gamma: float = 0.125, alpha: float = 1.0) -> LossTree:
    # SimNPO: -(2/beta) logsigmoid(-beta * mean_lp - gamma) = (2/beta) softplus(beta * mean_lp + gamma).
    return LossTree(
        ("*", rc(2.0 / beta), ("softplus", ("+", ("*", rc(beta), "lpf"), rc(gamma)))),
        ("neg", "lpr"),
        rc(alpha),
        5,
    )


SEEDS: tuple[tuple[str, LossTree], ...] = (
    # Gradient ascent: minimising -NLL, i.e. the mean forget log-prob.
    ("GA", LossTree("lpf", None, 1.0, 3)),
    # Gradient difference: ascent on forget + NLL on retain.
    ("GradDiff", LossTree("lpf", ("neg", "lpr"), 1.0, 5)),
    ("NPO", _npo()),
    ("SimNPO", _simnpo()),
    # EvoMU-style fallback templates.
    ("hinge_margin", LossTree(("relu", ("+", "dF", 0.5)), ("neg", "lpr"), 1.0, 5)),
    ("softplus_scaled", LossTree(("softplus", ("*", 2.0, "lpf")), ("neg", "lpr"), 1.0, 5)),
    # Focal weighting: still-remembered examples (high lpf) weigh more; a product of two positive
    # increasing factors, so monotone (sigmoid(k*lpf) * lpf itself is not, for lpf < -1/k).
    (
        "focal",
        LossTree(
            ("*", ("sigmoid", ("*", 1.0, "lpf")), ("softplus", ("*", 2.0, "dF"))), ("neg", "lpr"), 1.0, 5
        ),
    ),
    (
        "bounded_sigmoid",
        LossTree(("sigmoid", ("*", 2.0, "dF")), ("softplus", ("*", 2.0, ("neg", "dR"))), 1.0, 5),
    ),
    ("prob_ratio", LossTree(("exp", ("*", 1.0, "dF")), ("neg", "lpr"), 0.5, 4)),
    ("ref_ratio", LossTree(("/", "lpf", ("+", ("abs", "rpf"), 1.0)), ("relu", ("neg", "dR")), 2.0, 5)),
)


# Token-level templates (extended interface only).
TOKEN_SEEDS: tuple[tuple[str, LossTree], ...] = (
    # UnDIAL-like: push each token's log-prob down to `margin` below the reference's, then stop.
    ("token_undial", LossTree(("tmean", "f", ("relu", ("+", "tdF", 2.0))), ("neg", "lpr"), 1.0, 5)),
    # NPO per token, with a focal retain NLL ((1-p)^gamma: badly predicted retain tokens first).
    (
        "token_npo_focal_retain",
        LossTree(
            ("tmean", "f", ("*", 2.0, ("softplus", ("*", 1.0, "tdF")))),
            ("tmean", "r", ("focal", ("neg", "tlpr"), 2.0)),
            1.0,
            5,
        ),
    ),
    # Ascent weighted by the token's binary entropy: uncertain tokens move first.
    ("token_entropy", LossTree(("tmean", "f", ("entw", ("softplus", ("*", 2.0, "tdF")))), ("neg", "lpr"), 1.0, 5)),
    # Only the tokens the reference was confident on (log-prob above -1): the memorised ones.
    (
        "token_refmask",
        LossTree(("tmean", "f", ("refmask", ("softplus", ("*", 1.0, "tdF")), -1.0)), ("neg", "lpr"), 1.0, 5),
    ),
    # WGA (methods/wga.py): ascent weighted per token by the detached p^beta, beta = 1; retain NLL.
    ("token_wga", LossTree(("tmean", "f", ("wga", "tlpf", 1.0)), ("neg", "lpr"), 1.0, 5)),
    # SatImp (methods/satimp.py): weight p^5 (1 - p)^1, forget term x 0.1, retain NLL x 1.
    (
        "token_satimp",
        LossTree(("tmean", "f", ("*", 0.1, ("focal", ("wga", "tlpf", 5.0), 1.0))), ("neg", "lpr"), 1.0, 5),
    ),
    # CE-U (methods/ceu.py): the gradient of the cross-entropy to the true-token-masked detached
    # distribution, p / (1 - p) * d log p; no retain term, as the method.
    ("token_ceu", LossTree(("tmean", "f", ("ceu", "tlpf")), None, 1.0, 5)),
)


def seed_trees(interface: str = "faithful") -> list[tuple[str, LossTree]]:
    return list(SEEDS) + (list(TOKEN_SEEDS) if interface == "extended" else [])
