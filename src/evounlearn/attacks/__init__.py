"""Recovery attacks: does the forgotten knowledge come back? (docs/METRICS.md "Recovery attacks")

Each attack takes a model and returns a NEW model (the input is never changed), which is then
evaluated like any model; `suite.run_attacks` turns the evaluations into a recovery score per
forget metric, `(after - unlearned) / (target - unlearned)` (0 = nothing came back, 1 = all of
it), and the same for the retain oracle under the same attack (the floor: what an attack teaches a
model that never saw the data).

Registered attacks (`ATTACKS`: name -> kind + the options it fixes; `quantize` = both bit widths):

- `quantize_8bit`, `quantize_4bit` (FP4), `quantize_nf4`: `quantize.py`, bitsandbytes' rounding;
- `relearn`: k steps of fine-tuning on part of the forget rows, scored on the others (RTT split);
- `relearn_related`: k steps on related rows that are not the forget set (the benchmark's retain
  rows: other facts of the same kind; or a user file);
- `finetune`: fine-tuning (LoRA) on unrelated text (general-knowledge rows, or a user file);
- `noop`: a copy of the model (a control: recovery 0 by construction).

The generation attacks of PMC's paper (`sampling`, `prefill`) live in `evaluation/attacks.py`;
`split_attacks` separates the two kinds of a user's `--attacks` list. Torch-free.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .config import AttacksConfig, FinetuneOptions, QuantizeOptions, RelearnOptions

__all__ = ["ATTACKS", "GENERATION_ATTACKS", "GROUPS", "AttackSpec", "AttacksConfig", "FinetuneOptions",
           "QuantizeOptions", "RelearnOptions", "attack_options", "parse_model_attacks", "split_attacks"]


@dataclass(frozen=True)
class AttackSpec:
    name: str
    kind: str  # noop | quantize | relearn | finetune: the function that attacks (suite._ATTACK_FNS)
    fixed: dict[str, Any] = field(default_factory=dict)  # the options this name fixes
    description: str = ""


ATTACKS: dict[str, AttackSpec] = {s.name: s for s in (
    AttackSpec("quantize_8bit", "quantize", {"bits": 8}, "int8 per-row absmax (bitsandbytes load_in_8bit)"),
    AttackSpec("quantize_4bit", "quantize", {"bits": 4, "quant_type": "fp4"},
               "FP4 blockwise absmax, block 64 (bitsandbytes load_in_4bit default)"),
    AttackSpec("quantize_nf4", "quantize", {"bits": 4, "quant_type": "nf4"}, "NF4 blockwise absmax, block 64"),
    AttackSpec("relearn", "relearn", {"source": "forget"}, "fine-tune on part of the forget rows, score the rest"),
    AttackSpec("relearn_related", "relearn", {"source": "related"}, "fine-tune on related, not-forget rows"),
    AttackSpec("finetune", "finetune", {}, "fine-tune on unrelated text (general knowledge)"),
    AttackSpec("noop", "noop", {}, "a copy of the model (control)"),
)}
#: names that stand for several attacks
GROUPS: dict[str, tuple[str, ...]] = {"quantize": ("quantize_8bit", "quantize_4bit")}
GENERATION_ATTACKS = ("sampling", "prefill")
#: the attacks the robustness benchmark reports
REPORTED = ("quantize_8bit", "quantize_4bit", "relearn", "finetune")


def _names(text: str | Sequence[str] | None) -> list[str]:
    if not text:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip().lower() for s in items if s.strip()]


def split_attacks(text: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(model attacks, generation attacks) of a comma-separated list; groups expanded, order kept,
    duplicates dropped; an unknown name is a ConfigError listing the known ones."""
    model: list[str] = []
    gen: list[str] = []
    for n in _names(text):
        if n in GENERATION_ATTACKS:
            gen.append(n)
        elif n in GROUPS:
            model.extend(GROUPS[n])
        elif n in ATTACKS:
            model.append(n)
        else:
            known = [*GROUPS, *ATTACKS, *GENERATION_ATTACKS]
            raise ConfigError(f"unknown attack {n!r} (known: {', '.join(known)})")
    return list(dict.fromkeys(model)), list(dict.fromkeys(gen))


def parse_model_attacks(text: str | Sequence[str] | None) -> list[str]:
    """The model attacks of a list (generation attacks are a ConfigError here: a run's
    `attacks.names` takes model attacks only)."""
    model, gen = split_attacks(text)
    if gen:
        raise ConfigError(f"attack(s) {', '.join(gen)} are generation attacks (eval --attacks only); "
                          f"model attacks: {', '.join([*GROUPS, *ATTACKS])}")
    return model


def attack_options(name: str, cfg: AttacksConfig | None = None) -> QuantizeOptions | RelearnOptions | FinetuneOptions | None:
    """The typed options of attack `name` (its section of `cfg` with the fields the name fixes),
    checked; None for `noop`."""
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r} (known: {', '.join(ATTACKS)})")
    spec, cfg = ATTACKS[name], cfg or AttacksConfig()
    if spec.kind == "noop":
        return None
    opts = copy.deepcopy(getattr(cfg, spec.kind))
    for k, v in spec.fixed.items():
        setattr(opts, k, v)
    opts.check()
    return opts
