"""Config: schema validation names the offending key; cross-key checks; sweep expansion."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dppo.config import ConfigError, check_config, check_unique_keys, expand_experiments, rule_resources, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
SHIPPED = sorted(p.name for p in (ROOT / "configs").glob("*.yaml")) + ["../config.yaml"]


@pytest.fixture(scope="module")
def default_config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_validate(name):
    config = yaml.safe_load((ROOT / "configs" / name).read_text())
    validate_config(config, SCHEMA)
    assert check_config(config)


def _set(config, dotted, value):
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("bogus", 1, "config key <top level>: Additional properties are not allowed ('bogus'"),
        ("experiments.dpo.alpah", 0.1, "config key experiments.dpo: Additional properties are not allowed ('alpah'"),
        ("experiments.dpo.loss", "dpoo", "config key experiments.dpo.loss: 'dpoo' is not one of"),
        ("experiments.minll.f", "cubic", "config key experiments.minll.f: 'cubic' is not one of"),
        ("experiments.dpo.alpha", -0.1, "config key experiments.dpo.alpha: -0.1 is less than the minimum of 0"),
        ("experiments.dpo.beta", 0, "config key experiments.dpo.beta: 0 is less than or equal to the minimum of 0"),
        ("experiments.dpo.zeta", 1.5, "config key experiments.dpo.zeta: 1.5 is greater than the maximum of 1"),
        ("experiments.dpo.r_mode", "both", "config key experiments.dpo.r_mode: 'both' is not one of"),
        ("data.max_len_percentile", 0, "config key data.max_len_percentile: 0 is less than or equal to the minimum"),
        ("data.max_len_percentile", 101, "config key data.max_len_percentile: 101 is greater than the maximum of 100"),
        ("reward.backend", "gpt4", "config key reward.backend: 'gpt4' is not one of"),
        ("generation.backend", "sglang", "config key generation.backend: 'sglang' is not one of"),
        ("experiments.dpo.n_train", 0, "config key experiments.dpo.n_train: 0 is less than the minimum of 1"),
    ],
)
def test_schema_errors_name_the_key(default_config, key, value, expected):
    config = copy.deepcopy(default_config)
    _set(config, key, value)
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA)
    assert str(err.value).startswith(expected)


def test_sweeps_expand_to_stable_readable_names(default_config):
    experiments = expand_experiments(default_config)
    assert "unll__f=sqrt" in experiments
    assert "alpha__loss=conll__alpha=0.01" in experiments
    spec = experiments["alpha__loss=conll__alpha=0.01"]
    assert (spec["loss"], spec["alpha"], spec["group"]) == ("conll", 0.01, "alpha_sweep")
    assert spec["beta"] == default_config["preference_defaults"]["beta"]  # defaults applied
    assert experiments["unll__f=sqrt"]["label"] == "unll (sqrt)"
    assert experiments["unll_then_dpo"]["init"] == "unll__f=linear"
    # 1 dpo + 3 x 4 penalties + 3 x 2 alphas + 3 data-efficiency/chained + 4 variants
    assert len(experiments) == 26


def test_expansion_is_cartesian():
    config = {"preference_defaults": {"beta": 0.1}, "experiments": {"x": {"loss": "minll", "sweep": {"alpha": [0.1, 1.0], "seed": [0, 1, 2]}}}}
    names = list(expand_experiments(config))
    assert names == [f"x__alpha={a}__seed={s}" for a in ("0.1", "1") for s in (0, 1, 2)]


@pytest.mark.parametrize(
    "experiments, message",
    [
        ({"a": {"loss": "dpo", "init": "b"}}, "experiments.a.init: 'b' names no experiment"),
        ({"a": {"loss": "dpo", "init": "a"}}, "experiments.a.init: an experiment cannot start from itself"),
        ({"a": {"loss": "dpo", "init": "b"}, "b": {"loss": "dpo", "init": "a"}}, "loops through"),
        ({"sft": {"loss": "dpo"}}, "experiments.sft: the name is reserved"),
        ({"a": {"loss": "minll", "alpha": -1}}, "experiments.a: LossConfig.alpha must be"),
        ({"a": {"loss": "nope"}}, "experiments.a: LossConfig.name='nope' is not one of"),
        ({}, "at least one experiment"),
    ],
)
def test_cross_key_checks(experiments, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        check_config({"experiments": experiments})


def test_duplicate_experiment_names_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiments:\n  dpo: {loss: dpo}\n  dpo: {loss: ipo}\n")
    with pytest.raises(ConfigError, match="line 3: key 'dpo' is defined twice"):
        check_unique_keys([path])


def test_rule_resources_merge_default_and_rule():
    config = {"resources": {"default": {"gpu": 0, "mem_mb": 1000}, "sft": {"gpu": 1}}}
    assert rule_resources(config, "sft") == {"gpu": 1, "mem_mb": 1000}
    assert rule_resources(config, "score") == {"gpu": 0, "mem_mb": 1000}
