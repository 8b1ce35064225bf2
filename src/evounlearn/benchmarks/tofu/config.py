"""The TOFU benchmarks' options: `PrepareConfig` (`evounlearn prepare`) and `UnlearnConfig`
(`evounlearn unlearn`, a search candidate's run). Torch-free, so that the command line checks a
command's options (key=value against these dataclasses) before importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...attacks.config import AttacksConfig
from ...data.generated import GeneratedConfig
from ...evaluation.config import EvalConfig
from ...models.config import TinyModelConfig
from ...training.config import FinetuneConfig, TrainConfig


@dataclass
class PrepareConfig:
    data: str = "generated"  # "generated", a local TOFU-shaped folder, or a Hub dataset id
    forget_split: str = "forget10"
    generated: GeneratedConfig = field(default_factory=GeneratedConfig)
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    train: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache_dir: str = ""  # default: $EVOUNLEARN_CACHE or ./cache
    threads: int = 0  # torch CPU threads; 0 = torch's default


@dataclass
class UnlearnConfig:
    method: str = "npo"
    data: str = "generated"  # generated | TOFU-shaped folder | Hub id
    forget_split: str = "forget10"
    model: str = ""  # default: the prepared target model of the benchmark
    retain_results: str = ""  # default: the prepared retain oracle's results
    loss: dict[str, Any] = field(default_factory=dict)  # the method's loss params (defaults from its YAML)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    forget_part: str = "all"  # all | search | report: which part of the forget split to unlearn and score
    search_fraction: float = 0.5  # the search part = the first fraction of the split's rows (whole authors)
    run_dir: str = ""  # default: runs/<method>-<split>-<time>
    threads: int = 0
    # recovery attacks on the unlearned model after its evaluation (`attacks.names`, e.g.
    # quantize_4bit,relearn): the attacked models' summaries join the run's as "<key>@<attack>"
    # (what the `robust` fitness reads); docs/METRICS.md "Recovery attacks"
    attacks: AttacksConfig = field(default_factory=AttacksConfig)
