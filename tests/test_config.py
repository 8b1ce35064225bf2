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
