from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from evounlearn.config import load_config, parse_overrides, parse_value
from evounlearn.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-4
    lora: bool = False


@dataclass
class Outer:
    name: str = "x"
    steps: int = 3
    train: Inner = field(default_factory=Inner)
    loss: dict = field(default_factory=dict)


def test_values_parse_like_yaml():
    assert parse_value("1e-4") == 1e-4 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("[1, 2]") == [1, 2] and parse_value("npo") == "npo"


def test_overrides_nested_and_dicts(tmp_path):
    (tmp_path / "c.yaml").write_text("steps: 7\ntrain:\n  lr: 0.5\n")
    cfg = load_config(Outer, tmp_path / "c.yaml", ["train.lora=true", "loss.beta=0.2", "name=y"])
    assert cfg.steps == 7 and cfg.train.lr == 0.5 and cfg.train.lora is True
    assert cfg.loss == {"beta": 0.2} and cfg.name == "y"


def test_unknown_and_malformed_overrides():
    with pytest.raises(ConfigError, match="unknown option 'train.nope'"):
        load_config(Outer, None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["oops"])
    with pytest.raises(ConfigError, match="expects a number"):
        load_config(Outer, None, ["steps=abc"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, "/no/such.yaml")


def test_yaml_layers_merge_in_order_and_types_are_checked(tmp_path):
    (tmp_path / "a.yaml").write_text("steps: 2\nloss: {beta: 0.1, alpha: 1}\n")
    (tmp_path / "b.yaml").write_text("loss: {beta: 0.3}\ntrain: {lr: 2}\n")
    cfg = load_config(Outer, [tmp_path / "a.yaml", tmp_path / "b.yaml"], ["steps=4.0"])
    assert cfg.steps == 4 and isinstance(cfg.steps, int)
    assert cfg.loss == {"beta": 0.3, "alpha": 1} and cfg.train.lr == 2.0
    with pytest.raises(ConfigError, match="train.lora expects true/false"):
        load_config(Outer, None, ["train.lora=maybe"])
    with pytest.raises(ConfigError, match="'train' is a section"):
        load_config(Outer, None, ["train=3"])
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Outer, tmp_path / "bad.yaml")


def test_overrides_apply_in_place():
    cfg = Outer()
    inner = cfg.train
    from evounlearn.config import apply_overrides

    assert apply_overrides(cfg, {"train.lr": 0.25}) is cfg and inner.lr == 0.25


def test_a_mapping_is_a_layer_like_a_yaml_file(tmp_path):
    (tmp_path / "b.yaml").write_text("steps: 5\n")
    cfg = load_config(Outer, [{"steps": 2, "name": "shared"}, tmp_path / "b.yaml"], [])
    assert cfg.steps == 5 and cfg.name == "shared"


@pytest.mark.parametrize("command", ["evolve", "tune"])
def test_limits_and_job_options_are_typed(command):
    """`limits` is a section (a typo is one line naming the keys), `job_options` the candidate
    job's keyword arguments (an unknown one is one line, not a failure of every run)."""
    from evounlearn.search.config import load_search_config
    from evounlearn.search.tune import load_tune_config

    def load(over):
        return load_search_config(None, over) if command == "evolve" else load_tune_config(None, ["method=npo", *over])

    cfg = load(["limits.wall_s=5", "limits.memory_mb=null"])
    assert cfg.limits.wall_s == 5 and cfg.limits.cpu_s == 1800 and cfg.limits.memory_mb is None
    limits = cfg.limits.to_limits()
    assert (limits.wall_s, limits.cpu_s, limits.memory_mb) == (5, 1800, None)
    with pytest.raises(ConfigError, match=r"^unknown option 'limits.wal_s' \(known here: cpu_s, memory_mb, wall_s\)$"):
        load(["limits.wal_s=5"])
    assert load(["job_options.stage1_epochs=1"]).job_options == {"stage1_epochs": 1}
    with pytest.raises(ConfigError, match=r"^unknown option 'job_options.stage1_epoch' \(the candidate job's arguments: .*stage1_epochs"):
        load(["job_options.stage1_epoch=1"])


def test_tune_shares_evolves_run_settings_without_reading_files_in_defaults():
    """tune's defaults are plain values; evolve.yaml's run settings are a layer `load_tune_config`
    applies (so `TuneConfig()` reads no file, and a resumed tune's saved config is complete)."""
    from evounlearn.config import load_yaml
    from evounlearn.search.config import DEFAULT_YAML
    from evounlearn.search.tune import TuneConfig, load_tune_config

    evolve = load_yaml(DEFAULT_YAML)
    cfg = load_tune_config(None, ["method=npo"])
    assert cfg.unlearn == evolve["unlearn"] and cfg.limits.wall_s == evolve["limits"]["wall_s"]
    assert TuneConfig().unlearn == {}
    assert load_tune_config(None, ["method=npo", "unlearn.train.lr=0.1"]).unlearn["train"]["batch_size"] == 4


def test_the_job_options_known_to_the_config_are_the_candidate_jobs_arguments():
    import inspect

    from evounlearn.search.candidate import evaluate_candidate
    from evounlearn.search.config import CANDIDATE_JOB_PARAMS

    assert list(CANDIDATE_JOB_PARAMS) == list(inspect.signature(evaluate_candidate).parameters)
