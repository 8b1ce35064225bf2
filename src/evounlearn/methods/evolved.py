"""Loss programs through the engine: method `evolved` (docs/LOSS_PROGRAMS.md).

A loss program (an evolved candidate, or one written by hand) is Python source with a
`def loss_fn(...)` (or `loss_fn_<k>`; helpers allowed). Params (`loss.*`):

- `loss_file`: a path to the program, or `code`: its text. When `loss_file` is given, its text is
  copied into `code` in the saved config (`RUN_DIR/config.yaml`), so a run stays reproducible and
  resumable when the file moves;
- `interface`: `faithful` (the EvoMU signature), `extended` (token level) or `auto` (default:
  read from the function's signature);
- `function`: which candidate of the program to train with (default: the first one).

The program is checked with the sandbox's static whitelist (`sandbox.check_program`) when
the config is built (`build_config`), so a malformed file fails at once with a one-line
ConfigError. It is compiled with restricted builtins and globals {torch, F, math}: inside the
search's isolated worker it is compiled there; for a user's `evounlearn unlearn --method evolved
--loss-file best.py` it is compiled in-process (`allow_in_process=True`) once the static check has
passed: the user's own file is trusted like any other config. Generated code is never compiled in
the search driver.

Training guards (`sandbox.guards`, on by default; `loss.guard: false` turns them off), over the
whole run: the loss's direction (batch sums and per row) on the first `loss.guard_steps` (3)
steps and on a random `loss.guard_check_fraction` (default all) of the later ones, the order of
the rows, a retain watchdog (`loss.guard_retain_margin` nats/token below the reference model),
finite values and gradients, and a per-call time budget (`loss.guard_time_ratio` x a plain
NPO-like loss on the same tensors, at least the model's own step time and 0.05 s) with a hard
deadline enforced from outside the worker. A tripped guard stops training with a
`TrainingGuardError` ("training guard: loss decreases in forget log-probs on real batches at step 2").

The first-line docstring `\"\"\"epochs: K\"\"\"` sets `train.epochs` unless `train.epochs` is given
explicitly (on the command line or in the config file).

Faithful interface: `loss_fn(log_probs_forget, log_probs_retain, ref_log_probs_forget,
ref_log_probs_retain)` with per-sequence MEAN answer-token log-probs (current model: with grad;
reference: the frozen model's summed log-prob, cached once, divided by the answer length);
needs {"retain", "ref_seq_logp", "ref_seq_logp_retain"}.
Extended interface: `loss_fn(tok_logp_forget, mask_forget, tok_logp_retain, mask_retain,
ref_tok_logp_forget, ref_tok_logp_retain)` with [B, T] per-token log-probs (0 off the answer),
float masks and the frozen model's per-token log-probs (from its logits, no grad); needs
{"retain", "ref_logits_forget", "ref_logits_retain"}.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..models.scoring import token_logprobs
from ..sandbox import SandboxError, check_program, compile_program, interface_of, parse_epochs
from ..sandbox.guards import GuardConfig, TrainingGuard
from .base import MethodInputs, SideOutputs, register_method

INTERFACE_CHOICES = ("auto", "faithful", "extended")
_COMPILED: dict[str, Callable[..., Any]] = {}
_GUARDS: dict[str, TrainingGuard] = {}  # guard token (in the run's params) -> the run's guard


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def read_loss_file(path: str | Path) -> str:
    """The text of a loss file; ConfigError when it cannot be read."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"loss file {p} does not exist")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"loss file {p} cannot be read: {_one_line(str(e))}") from None


def program_code(params: Mapping[str, Any]) -> str | None:
    """The program text from `code` or `loss_file` (None when neither is set)."""
    code = params.get("code")
    if code:
        return str(code)
    path = params.get("loss_file")
    if path:
        return read_loss_file(str(path))
    return None


def resolve_interface(code: str, interface: str | None) -> str:
    """`faithful` / `extended`; `auto` (or empty) reads the first candidate's signature."""
    iface = (interface or "auto").strip().lower()
    if iface not in INTERFACE_CHOICES:
        raise ConfigError(f"loss.interface must be one of {', '.join(INTERFACE_CHOICES)}, not {interface!r}")
    if iface == "auto":
        iface = interface_of(code)
    return iface


def check_loss_program(code: str, interface: str = "auto", function: str = "") -> tuple[str, str, int | None]:
    """Statically check a loss program; returns (function name, interface, docstring epochs).

    Raises a one-line ConfigError naming the problem (syntax error, forbidden construct, wrong
    signature, missing function)."""
    iface = resolve_interface(code, interface)
    pc = check_program(code, iface)
    if pc.error:
        raise ConfigError(f"loss program rejected: {_one_line(pc.error)}")
    names = [f.name for f in pc.losses]
    name = function or names[0]
    if name not in names:
        raise ConfigError(f"no loss function named {name!r} in the loss program (found: {', '.join(names)})")
    reason = pc.reasons.get(name, "rejected")
    if reason != "ok":
        raise ConfigError(f"loss function {name} rejected: {_one_line(reason)}")
    src = next(f.source for f in pc.losses if f.name == name)
    return name, iface, parse_epochs(src)


def configure(cfg: Any, explicit: set[str]) -> None:
    """Config-time hook (`MethodSpec.configure`, run by `training.resolve`): read `loss_file` into `code`,
    check the program, and let its epochs docstring set `train.epochs` unless given explicitly."""
    params = cfg.loss
    if params.get("loss_file"):
        params["code"] = read_loss_file(str(params["loss_file"]))
    code = params.get("code")
    if not code:
        return  # checked again in setup (a resumed run restores `code` after build_config)
    _, _, epochs = check_loss_program(str(code), str(params.get("interface") or "auto"),
                                      str(params.get("function") or ""))
    if epochs is not None and "train.epochs" not in explicit:
        cfg.train.epochs = int(epochs)


def _resolved(params: Mapping[str, Any]) -> tuple[str, str, str]:
    code = program_code(params)
    if not code:
        raise ConfigError("method evolved needs a loss program: loss.loss_file=PATH (--loss-file) or loss.code")
    name, iface, _ = check_loss_program(code, str(params.get("interface") or "auto"),
                                        str(params.get("function") or ""))
    return code, name, iface


def compiled_loss(code: str, name: str, interface: str) -> Callable[..., Any]:
    """Compile (once per process) candidate `name` of a checked program."""
    key = hashlib.sha256(f"{interface}\x00{name}\x00{code}".encode()).hexdigest()
    fn = _COMPILED.get(key)
    if fn is None:
        try:
            # Statically checked above; inside the search worker this is the worker's compile, in
            # a user's `evounlearn unlearn` it is the user's own file (trusted like any config).
            fn = compile_program(code, name, interface=interface, allow_in_process=True)
        except SandboxError as e:
            raise ConfigError(f"loss function {name} rejected: {_one_line(str(e))}") from None
        _COMPILED[key] = fn
    return fn


def _needs(params: Mapping[str, Any]) -> frozenset[str]:
    code = program_code(params) or ""
    iface = resolve_interface(code, str(params.get("interface") or "auto")) if code else "faithful"
    if iface == "extended":
        return frozenset({"retain", "ref_logits_forget", "ref_logits_retain"})
    return frozenset({"retain", "ref_seq_logp", "ref_seq_logp_retain"})


def _setup(model: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    code, name, iface = _resolved(params)
    compiled_loss(code, name, iface)  # fail before training, not at the first step
    return {"code": code, "function": name, "interface": iface, "guard_token": uuid.uuid4().hex}


def _guard(params: Mapping[str, Any], interface: str) -> TrainingGuard | None:
    """The training run's guard (None when `loss.guard` is false); one per setup token."""
    if not params.get("guard", True):
        return None
    token = str(params.get("guard_token") or "")
    guard = _GUARDS.get(token)
    if guard is None:  # also after a resume: the direction steps are checked again
        config = GuardConfig(
            direction_steps=int(params.get("guard_steps", GuardConfig.direction_steps)),
            check_fraction=float(params.get("guard_check_fraction", GuardConfig.check_fraction)),
            retain_margin=float(params.get("guard_retain_margin", GuardConfig.retain_margin)),
            time_ratio=float(params.get("guard_time_ratio", GuardConfig.time_ratio)),
        )
        guard = _GUARDS[token] = TrainingGuard(interface, config)
    return guard


def _ref_token_logps(side: SideOutputs) -> torch.Tensor:
    if side.ref_logits is None:
        raise ValueError("missing method input: ref_logits")
    return token_logprobs(side.ref_logits, side.labels)[0].detach()


def _mean_ref(side: SideOutputs) -> torch.Tensor:
    if side.ref_seq_logp is None:
        raise ValueError("missing method input: ref_seq_logp")
    lengths = side.lengths.clamp(min=1).to(torch.float32)
    return (side.ref_seq_logp.float() / lengths).detach()


def loss_arguments(inputs: MethodInputs, interface: str) -> tuple[torch.Tensor, ...]:
    """The loss function's arguments, in the interface's order."""
    f, r = inputs.forget, inputs.retain
    if r is None:
        raise ValueError("missing method input: retain batch")
    if interface == "faithful":
        return (f.seq_mean_logp, r.seq_mean_logp, _mean_ref(f).to(f.logits.device),
                _mean_ref(r).to(r.logits.device))
    tf, tr = f.token_logps, r.token_logps
    return (tf, f.mask.to(tf.dtype), tr, r.mask.to(tr.dtype), _ref_token_logps(f), _ref_token_logps(r))


@register_method("evolved", needs=_needs, setup=_setup, configure=configure)
def evolved(inputs: MethodInputs, params: Mapping[str, Any]) -> torch.Tensor:
    """A loss program (evolved by the search or written by hand), checked and sandbox-compiled."""
    code, name, iface = str(params["code"]), str(params["function"]), str(params["interface"])
    fn = compiled_loss(code, name, iface)
    args = loss_arguments(inputs, iface)
    guard = _guard(params, iface)
    out = fn(*args) if guard is None else guard.call(fn, args)
    if not isinstance(out, torch.Tensor) or out.numel() != 1 or not out.is_floating_point():
        what = type(out).__name__ if not isinstance(out, torch.Tensor) else f"tensor of shape {list(out.shape)}"
        raise ValueError(f"loss function {name} returned {what}, not a floating-point scalar")
    return out.reshape(())

