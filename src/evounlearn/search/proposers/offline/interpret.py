"""The interpreter of loss trees (torch, our own trees only: nothing is exec-ed) and the numeric
check that a tree is a usable unlearning loss (`check_tree`: a finite scalar, increasing in the
forget log-probs, decreasing in the retain log-probs, on probe tensors).
"""

from __future__ import annotations

from typing import Any

from .tree import EXP_MAX, LOG_EPS, TOKEN_WEIGHTS, UNARY, LossTree, Node, structure_problem, uses_tokens


def _evaluate_token(node: tuple, env: dict[str, Any], side: str | None) -> Any:
    """A token mean or a detached token weight (what `_render_token` writes)."""
    import torch

    op = node[0]
    if op == "tmean":
        mask = env[f"mask_{node[1]}"]
        return (evaluate(node[2], env, node[1]) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    s = side or "f"
    x = evaluate(node[1], env, side)
    cur = env[f"tlp{s}"].detach()
    p = torch.exp(cur)
    if op == "focal":
        return torch.pow(1.0 - p, node[2]) * x
    if op == "entw":
        return -(p * cur + (1.0 - p) * torch.log(torch.clamp(1.0 - p, min=LOG_EPS))) * x
    if op == "wga":
        return torch.exp(node[2] * cur) * x
    if op == "ceu":
        return p / torch.clamp(1.0 - p, min=LOG_EPS) * x
    return (env[f"trp{s}"] > node[2]).float() * x


def evaluate(node: Node, env: dict[str, Any], side: str | None = None) -> Any:
    """Evaluate an element-wise node with torch; `env` maps the leaf names to tensors (token trees:
    also "mask_f" / "mask_r"); `side`: inside a token mean of that side."""
    import torch
    import torch.nn.functional as F

    if isinstance(node, float):
        return node
    if isinstance(node, str):
        return env[node]
    op = node[0]
    if op == "tmean" or op in TOKEN_WEIGHTS:
        return _evaluate_token(node, env, side)
    if op == "clamp":
        x = evaluate(node[1], env, side)
        return torch.clamp(x, min=node[2], max=node[3])
    if op in UNARY:
        x = evaluate(node[1], env, side)
        if op == "softplus":
            return F.softplus(x)
        if op == "logsigmoid":
            return F.logsigmoid(x)
        if op == "sigmoid":
            return torch.sigmoid(x)
        if op == "exp":
            return torch.exp(torch.clamp(x, max=EXP_MAX))
        if op == "log":
            return torch.log(torch.clamp(x, min=LOG_EPS))
        if op == "relu":
            return F.relu(x)
        if op == "abs":
            return torch.abs(x)
        if op == "square":
            return torch.square(x)
        if op == "tanh":
            return torch.tanh(x)
        if op == "neg":
            return -x
    a = evaluate(node[1], env, side)
    b = evaluate(node[2], env, side)
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b
    raise ValueError(f"unknown op {op!r}")


def loss_value(tree: LossTree, lpf: Any, lpr: Any, rpf: Any, rpr: Any) -> Any:
    """The scalar loss of `tree` on 1-D tensors (what the rendered faithful code computes)."""
    env = {"lpf": lpf, "lpr": lpr, "rpf": rpf, "rpr": rpr, "dF": lpf - rpf, "dR": lpr - rpr}
    return _loss_from_env(tree, env)


def token_env(tlpf: Any, mask_f: Any, tlpr: Any, mask_r: Any, trpf: Any, trpr: Any) -> dict[str, Any]:
    """The leaves of a token tree from [B, T] per-token tensors (the means as the extended render)."""

    def mean(t: Any, m: Any) -> Any:
        return (t * m).sum(-1) / m.sum(-1).clamp(min=1.0)

    lpf, lpr, rpf, rpr = mean(tlpf, mask_f), mean(tlpr, mask_r), mean(trpf, mask_f), mean(trpr, mask_r)
    return {
        "tlpf": tlpf, "tlpr": tlpr, "trpf": trpf, "trpr": trpr, "tdF": tlpf - trpf, "tdR": tlpr - trpr,
        "mask_f": mask_f, "mask_r": mask_r,
        "lpf": lpf, "lpr": lpr, "rpf": rpf, "rpr": rpr, "dF": lpf - rpf, "dR": lpr - rpr,
    }


def _loss_from_env(tree: LossTree, env: dict[str, Any]) -> Any:
    out = evaluate(tree.forget, env).mean()
    if tree.retain is not None:
        out = out + tree.weight * evaluate(tree.retain, env).mean()
    return out


def probe_inputs(batch: int = 64, seed: int = 0) -> dict[str, Any]:
    """Probe tensors spanning the range of mean answer log-probs (<= 0, down to about -30)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.05, 0.5, 2.0, 6.0, 15.0, 30.0]).repeat(batch // 6 + 1)[:batch]

    def lp() -> torch.Tensor:
        return -(torch.rand(batch, generator=g) * scale + 1e-3)

    lpf, lpr = lp(), lp()
    # Half of the references near the current values (early training), half independent (late).
    near = torch.arange(batch) % 2 == 0
    rpf = torch.where(near, (lpf + 0.8 * torch.randn(batch, generator=g)).clamp(max=-1e-3), lp())
    rpr = torch.where(near, (lpr + 0.8 * torch.randn(batch, generator=g)).clamp(max=-1e-3), lp())
    return {"lpf": lpf, "lpr": lpr, "rpf": rpf, "rpr": rpr}


def token_probe_inputs(batch: int = 16, length: int = 8, seed: int = 0) -> dict[str, Any]:
    """[B, T] probe tensors for token trees: per-token log-probs (0 on padding) and masks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.05, 0.5, 2.0, 6.0, 15.0]).repeat(batch // 5 + 1)[:batch, None]

    def lp() -> torch.Tensor:
        return -(torch.rand(batch, length, generator=g) * scale + 1e-3)

    def mask() -> torch.Tensor:
        lengths = torch.randint(1, length + 1, (batch,), generator=g)
        lengths[0] = length
        return (torch.arange(length)[None, :] < lengths[:, None]).float()

    mf, mr = mask(), mask()
    tlpf, tlpr = lp(), lp()
    near = (torch.arange(batch) % 2 == 0)[:, None]
    trpf = torch.where(near, (tlpf + 0.8 * torch.randn(batch, length, generator=g)).clamp(max=-1e-3), lp())
    trpr = torch.where(near, (tlpr + 0.8 * torch.randn(batch, length, generator=g)).clamp(max=-1e-3), lp())
    return {"tlpf": tlpf * mf, "tlpr": tlpr * mr, "trpf": trpf * mf, "trpr": trpr * mr, "mask_f": mf, "mask_r": mr}


def _probe_sets(tree: LossTree, seeds: tuple[int, ...]) -> list[tuple[dict[str, Any], bool]]:
    """(probe, at_init) pairs; at the first step the reference equals the current model."""
    if uses_tokens(tree):
        probes = [(token_probe_inputs(seed=seed), False) for seed in seeds]
        init = dict(token_probe_inputs(seed=seeds[0] if seeds else 0))
        init.update(trpf=init["tlpf"], trpr=init["tlpr"])
    else:
        probes = [(probe_inputs(seed=seed), False) for seed in seeds]
        init = dict(probe_inputs(seed=seeds[0] if seeds else 0))
        init.update(rpf=init["lpf"], rpr=init["lpr"])
    return probes + [(init, True)]


def _loss_and_grads(tree: LossTree, p: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(loss, d loss / d forget log-probs, d loss / d retain log-probs) on one probe."""
    import torch

    tokens = "tlpf" in p
    f = p["tlpf" if tokens else "lpf"].clone().requires_grad_(True)
    r = p["tlpr" if tokens else "lpr"].clone().requires_grad_(True)
    with torch.enable_grad():
        if tokens:
            loss = _loss_from_env(tree, token_env(f, p["mask_f"], r, p["mask_r"], p["trpf"], p["trpr"]))
        else:
            loss = loss_value(tree, f, r, p["rpf"], p["rpr"])
        if not torch.is_tensor(loss) or loss.dim() != 0 or not torch.isfinite(loss):
            return loss, None, None
        gf, gr = torch.autograd.grad(loss, (f, r), allow_unused=True)
    return loss, gf, gr


def check_tree(tree: LossTree, seeds: tuple[int, ...] = (0, 1)) -> str | None:
    """None if the loss is a finite scalar, non-decreasing in every forget log-prob (increasing
    somewhere, also when the reference equals the current model) and non-increasing in every
    retain log-prob (decreasing somewhere); else a reason. Token trees are checked per token."""
    import torch

    problem = structure_problem(tree)
    if problem:
        return problem
    for p, at_init in _probe_sets(tree, seeds):
        loss, gf, gr = _loss_and_grads(tree, p)
        if not torch.is_tensor(loss) or loss.dim() != 0:
            return "the loss is not a scalar tensor"
        if not torch.isfinite(loss):
            return "the loss is not finite on probe inputs"
        if gf is None or not torch.isfinite(gf).all():
            return "no finite gradient reaches the forget log-probs"
        tol = 1e-7
        if (gf < -tol).any() or gf.sum() <= tol:
            return "the loss is not increasing in the forget log-probs"
        if tree.retain is not None:
            if gr is None or not torch.isfinite(gr).all():
                return "no finite gradient reaches the retain log-probs"
            if (gr > tol).any() or (not at_init and gr.sum() >= -tol):
                return "the loss is not decreasing in the retain log-probs"
    return None
