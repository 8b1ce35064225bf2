"""The contract between the training loop and an unlearning method.

A method is a **pure loss function** `loss(inputs: MethodInputs, params: dict) -> scalar tensor`
plus a declaration of what it needs (`needs`), registered by name with `@register_method`. Its
default hyper-parameters live in `methods/configs/<name>.yaml` (`loss:` for the loss function's
params, `train:` for the loop: lr, epochs, ...).

The loop builds `MethodInputs` for each micro-batch. Everything a method may need is declared:
- "retain":          `inputs.retain` is filled (paired retain batch of equal size).
- "ref_seq_logp":    `side.ref_seq_logp` holds the frozen model's summed answer log-prob per
                     sequence, computed once before training and cached by example index
                     (forget and alt sides; add "ref_seq_logp_retain" for the retain side).
- "ref_logits_forget" / "ref_logits_retain": `side.ref_logits` holds the frozen model's logits
                     (no grad) for that side of this batch.
- "hidden":          `side.hidden` / `side.ref_hidden` hold activations at `params["layer"]`.
- "alt":             `inputs.alt` holds an alternative answer to the forget questions (IdkDPO:
                     a refusal), with its own `ref_seq_logp` when "ref_seq_logp" is also needed.
A method may also provide `setup(model, params) -> dict` (run once before training; its result
is merged into `params`, e.g. RMU's random direction), `trainable(model, params) -> list[str]`
(names of the parameters to train; default: all, or the LoRA adapter), and
`batch_hook_factory(model, fmt, source, split, params) -> hook`: a callable
`hook(model, indices, forget_rows) -> forget_rows` run on every forget micro-batch before the
forward pass (PMC replaces the answers with the model's own samples). A hook with
`state_dict()` / `load_state_dict(state)` has its state saved in checkpoints, so runs resume.
Two config/data hooks complete the declaration:
- `configure(cfg, explicit) -> None`: run when a run's config is resolved (`training.resolve`);
  `cfg.loss` / `cfg.train` may be changed, `explicit` = the dotted keys the user set (the
  `evolved` method reads its loss program here and lets its epochs docstring set `train.epochs`);
- `build_data(fmt, forget_rows, params) -> {side: rows}`: extra encoded sides a QA benchmark
  builds from the forget rows (IdkDPO: `alt`, a refusal per forget question); with
  `build_data_model=True` it is called as `build_data(fmt, forget_rows, params, model=model,
  model_path=path, cache_dir=dir)`: sides made *by the model to unlearn*, before any update
  (AltPO's alternate answers, sampled from it and cached per model under `dir`);
- `state_update(inputs, params, epoch) -> dict`: a pure function run (without gradient) after
  every loss evaluation, on the same inputs; what it returns is merged into the run's params, which
  checkpoints save and `--resume` restores (PDU's dual variable: its value at step t is a param
  the loss reads, updated from that step's retain loss).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import load_yaml
from ..errors import ConfigError

# torch is imported where tensors are touched: the registry (names, YAML defaults) stays
# torch-free, so that the command line checks a method name before importing torch.
if TYPE_CHECKING:
    import torch

NEEDS = frozenset(
    {"retain", "ref_seq_logp", "ref_seq_logp_retain", "ref_logits_forget", "ref_logits_retain", "hidden", "alt",
     "self_generated"}
)


@dataclass
class SideOutputs:
    """Model outputs for one side (forget, retain or alt) of a micro-batch.

    All sequence tensors are next-token aligned: `logits[:, t]` predicts `labels[:, t]`
    (the loop has already dropped the last logit and the first label).
    """

    logits: torch.Tensor  # [B, T, V] current model, with grad
    labels: torch.Tensor  # [B, T]; IGNORE_INDEX outside the answer tokens (+EOS)
    index: torch.Tensor  # [B] example indices within the split
    target_ids: torch.Tensor | None = None  # [B, T] the next token at every aligned position,
    #   prompt and padding included (input_ids[:, 1:]); for losses that score all positions
    attention_mask: torch.Tensor | None = None  # [B, T] 1 where the aligned target is a real token
    ref_logits: torch.Tensor | None = None  # [B, T, V] frozen model, no grad
    ref_seq_logp: torch.Tensor | None = None  # [B] frozen model's summed answer log-prob (cached)
    hidden: torch.Tensor | None = None  # [B, S, H] current activations at the method's layer
    ref_hidden: torch.Tensor | None = None  # [B, S, H] frozen activations at that layer
    hidden_mask: torch.Tensor | None = None  # [B, S] 1 on real tokens (unshifted)

    @property
    def mask(self) -> torch.Tensor:
        """Boolean mask of answer tokens."""
        from ..data.prompting import IGNORE_INDEX

        return self.labels != IGNORE_INDEX

    @property
    def token_logps(self) -> torch.Tensor:
        """log p(label_t) per position, 0 where masked. [B, T]"""
        from ..models.scoring import token_logprobs

        return token_logprobs(self.logits, self.labels)[0]

    @property
    def seq_logp(self) -> torch.Tensor:
        """Summed answer log-prob per sequence. [B]"""
        return self.token_logps.sum(-1)

    @property
    def lengths(self) -> torch.Tensor:
        """Number of answer tokens per sequence. [B]"""
        return self.mask.sum(-1)

    @property
    def seq_mean_logp(self) -> torch.Tensor:
        """Mean answer-token log-prob per sequence. [B]"""
        return self.seq_logp / self.lengths.clamp(min=1)

    @property
    def nll(self) -> torch.Tensor:
        """Token-mean NLL over all answer tokens of the batch (scalar)."""
        return -self.token_logps.sum() / self.mask.sum().clamp(min=1)


@dataclass
class MethodInputs:
    forget: SideOutputs
    retain: SideOutputs | None = None
    alt: SideOutputs | None = None


LossFn = Callable[[MethodInputs, Mapping[str, Any]], "torch.Tensor"]


@dataclass
class MethodSpec:
    name: str
    loss: LossFn
    needs: frozenset[str] | Callable[[Mapping[str, Any]], frozenset[str]]
    defaults: dict[str, Any] = field(default_factory=dict)  # {"loss": {...}, "train": {...}}
    setup: Callable[[Any, Mapping[str, Any]], dict[str, Any]] | None = None
    trainable: Callable[[Any, Mapping[str, Any]], list[str]] | None = None
    batch_hook_factory: Callable[..., Any] | None = None
    configure: Callable[[Any, set[str]], None] | None = None
    build_data: Callable[..., dict[str, list[Any]]] | None = None
    build_data_model: bool = False
    state_update: Callable[[MethodInputs, Mapping[str, Any], int], dict[str, Any]] | None = None
    description: str = ""

    def needs_for(self, params: Mapping[str, Any]) -> frozenset[str]:
        """What the loop must provide, given this run's params (e.g. GradDiff's KL retain term)."""
        return frozenset(self.needs(params)) if callable(self.needs) else self.needs


METHODS: dict[str, MethodSpec] = {}
CONFIG_DIR = Path(__file__).parent / "configs"


def register_method(
    name: str,
    needs: set[str] | frozenset[str] | Callable[[Mapping[str, Any]], frozenset[str]] = frozenset(),
    setup: Callable | None = None,
    trainable: Callable | None = None,
    batch_hook_factory: Callable | None = None,
    configure: Callable | None = None,
    build_data: Callable | None = None,
    build_data_model: bool = False,
    state_update: Callable | None = None,
) -> Callable[[LossFn], LossFn]:
    """Register `fn` as method `name`; its defaults are read from configs/<name>.yaml."""
    unknown = set() if callable(needs) else set(needs) - NEEDS
    if unknown:
        raise ValueError(f"method {name}: unknown needs {sorted(unknown)}")

    def deco(fn: LossFn) -> LossFn:
        cfg_path = CONFIG_DIR / f"{name}.yaml"
        defaults = load_yaml(cfg_path) if cfg_path.exists() else {}
        METHODS[name] = MethodSpec(
            name=name,
            loss=fn,
            needs=needs if callable(needs) else frozenset(needs),
            defaults=defaults or {},
            setup=setup,
            trainable=trainable,
            batch_hook_factory=batch_hook_factory,
            configure=configure,
            build_data=build_data,
            build_data_model=build_data_model,
            state_update=state_update,
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
        )
        return fn

    return deco


def method_names() -> list[str]:
    """Every known method name, without importing any method module (nor torch): the built-in
    ones have a `configs/<name>.yaml`, others registered themselves already."""
    return sorted({p.stem for p in CONFIG_DIR.glob("*.yaml")} | set(METHODS))


def check_method_name(name: str) -> str:
    """The registry key of `name`; a ConfigError naming the known methods when there is none."""
    key = str(name).lower()
    if key not in METHODS and key not in method_names():
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(method_names())})")
    return key


@dataclass
class MethodInfo:
    """What the registry knows of a method without importing its module: name and YAML defaults
    (enough for `training.resolve.method_defaults` / `check_loss_params`)."""

    name: str
    defaults: dict[str, Any] = field(default_factory=dict)


def method_info(name: str) -> MethodSpec | MethodInfo:
    """The registered spec, or the name and `configs/<name>.yaml` defaults of a built-in method
    whose module is not imported yet (torch-free)."""
    key = check_method_name(name)
    if key in METHODS:
        return METHODS[key]
    path = CONFIG_DIR / f"{key}.yaml"
    return MethodInfo(key, load_yaml(path))


def get_method(name: str) -> MethodSpec:
    key = check_method_name(name)  # before importing the method modules (torch)
    from . import load_all  # registers the built-in methods on first use

    load_all()
    if key not in METHODS:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[key]
