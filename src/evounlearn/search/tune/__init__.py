"""`evounlearn tune`: hyperparameter search for one registered unlearning method (docs/TUNE.md).

- `config`   `TuneConfig` and the methods that can be tuned;
- `space`    the search space (a range per loss param, the learning rate, the epochs);
- `study`    the Optuna side: import on first use, the TPE sampler, the study's storage;
- `tuner`    `Tuner`: runs (or resumes) one tune, trials through the executor, then finalists;
- `outputs`  leaderboard.json / .md and best_config.yaml.
"""

from .config import TuneConfig, check_method, load_tune_config, tunable_methods
from .space import ParamRange, SearchSpace, build_space
from .study import DB_NAME, STUDY_NAME, require_optuna, storage_url
from .tuner import Tuner

__all__ = [
    "DB_NAME",
    "STUDY_NAME",
    "ParamRange",
    "SearchSpace",
    "TuneConfig",
    "Tuner",
    "build_space",
    "check_method",
    "load_tune_config",
    "require_optuna",
    "storage_url",
    "tunable_methods",
]
