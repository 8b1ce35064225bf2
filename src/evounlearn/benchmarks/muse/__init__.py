"""The MUSE-News benchmark, tiny setting: a target and a retain oracle that fit a 2-core CPU.

- `config`     `MuseConfig` and the data source;
- `material`   the forget / retain / holdout material (text) and its rows (token ids);
- `prepare`    the tokenizer, the target and the retain oracle, their evaluations (cached);
- `benchmark`  unlearning runs (`unlearn_muse`), the fitnesses and the registered `MuseBenchmark`.
"""

from .benchmark import (
    MUSE_FITNESSES,
    MuseBenchmark,
    muse_benchmark_fitness,
    muse_calibrated_fitness,
    unlearn_muse,
)
from .config import HUB_ID, MuseConfig, default_muse_source
from .material import MuseMaterial, MuseRows, build_rows, load_material, source_sentences
from .prepare import MusePrepared, evaluate_on_material, prepare_muse, stand_ins

__all__ = [
    "HUB_ID",
    "MUSE_FITNESSES",
    "MuseBenchmark",
    "MuseMaterial",
    "MusePrepared",
    "MuseRows",
    "MuseConfig",
    "build_rows",
    "default_muse_source",
    "evaluate_on_material",
    "load_material",
    "muse_benchmark_fitness",
    "muse_calibrated_fitness",
    "prepare_muse",
    "source_sentences",
    "stand_ins",
    "unlearn_muse",
]
