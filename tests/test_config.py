"""Config -> settings: the schema and the settings classes name the offending key; cross-key
checks; sweep expansion; one home for every default (dppo.settings)."""

from __future__ import annotations

import copy
import os
import re
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
from pipeline import snakemake

from dppo import settings as st
from dppo.config import (
    ConfigError,
    check_config_files,
    check_vllm_environments,
    expand_experiments,
    load_settings,
    load_yaml,
    validate_config,
    vllm_problem,
)
from dppo.schema import config_schema, reference_markdown

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]


@pytest.fixture(scope="module")
def default_config():
    return load_yaml(ROOT / "config.yaml")


def _load(config):
    validate_config(config)
    return load_settings(config)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load(path):
    settings = _load(load_yaml(path))
    assert settings.experiments and all(isinstance(e, st.Experiment) for e in settings.experiments.values())


def _set(config, dotted, value):
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
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
        ("generation.engine", "sglang", "config key generation.engine: 'sglang' is not one of"),
        ("reward.engine", "tgi", "config key reward.engine: 'tgi' is not one of"),
        ("experiments.dpo.n_train", 0, "config key experiments.dpo.n_train: 0 is less than the minimum of 1"),
        ("toy.losses.dpo.bta", 0.1, "config key toy.losses.dpo: Additional properties are not allowed ('bta'"),
    ],
)
def test_schema_errors_name_the_key(default_config, key, value, expected):
    config = copy.deepcopy(default_config)
    _set(config, key, value)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert str(err.value).startswith(expected)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        # Values a JSON schema lets through (NaN compares false with every bound, infinities are numbers).
        ("data.max_len_percentile", float("nan"), "config key data.max_len_percentile: must be a finite number"),
        ("sft.lr", float("inf"), "config key sft.lr: must be a finite number"),
        ("preference_defaults.lr", float("nan"), "config key experiments.dpo.lr: must be a finite number"),
        ("sft.epochs", float("inf"), "config key sft.epochs: must be a finite number"),
        ("sft.scheduler", "bogus", "config key sft.scheduler: 'bogus' is not one of"),
        ("sft.micro_batch_size", 5, "config key sft.micro_batch_size: 5 does not divide batch_size 32"),
        ("experiments.dpo.alpha", float("nan"), "config key experiments.dpo.alpha: must be a finite number"),
        ("toy.dynamics_loss", "dpoo", "config key toy.dynamics_loss: 'dpoo' is not a label of toy.losses"),
        ("reward.backend", "seqcls", "config key reward.model: reward backend 'seqcls' needs a model"),
        ("win_rate.n_boot", 5, "config key win_rate.n_boot"),
        ("experiments.dpo_small.n_train", 5000, "config key experiments.dpo_small.n_train: 5000 is more than the 1200"),
        ("resources.sft.gpu", -1, "config key resources.sft.gpu: -1 is less than the minimum of 0"),
        ("claims.dppo", "nope", "config key claims.dppo: 'nope' names no experiment"),
        # found by benchmarks/reliability.py: numpy refuses a negative seed inside the job
        ("experiments.dpo.seeds", [-1], "config key experiments.dpo.seeds.0: -1 is less than the minimum of 0"),
        ("toy.seeds", [0, 0], "config key toy.seeds: must be a list of distinct"),  # the paper would count 2 seeds
        ("tiny_model.num_attention_heads", 5, "config key tiny_model.num_attention_heads: must divide hidden_size 96"),
        ("tiny_model.num_key_value_heads", 2, "config key tiny_model.num_key_value_heads: must divide"),
    ],
)
def test_bad_values_name_the_key(default_config, key, value, expected):
    config = copy.deepcopy(default_config)
    _set(config, key, value)
    with pytest.raises(ConfigError) as err:
        _load(config)
    assert str(err.value).startswith(expected), str(err.value)


def test_sweeps_expand_to_stable_readable_names(default_config):
    experiments = expand_experiments(default_config)
    assert "unll_f__f=sqrt" in experiments
    assert "alpha__loss=conll__alpha=0.01" in experiments
    exp = experiments["alpha__loss=conll__alpha=0.01"]
    assert (exp.loss.name, exp.loss.alpha, exp.group) == ("conll", 0.01, "alpha_sweep")
    assert exp.loss.beta == default_config["preference_defaults"]["beta"]  # the grid's shared values apply
    assert experiments["unll_f__f=sqrt"].label == "unll (sqrt)"
    assert experiments["unll_then_dpo"].init == "unll"
    assert experiments["unll"].seeds == (0, 1, 2) and experiments["unll_f__f=sqrt"].seeds == (0,)


def test_expansion_is_cartesian():
    config = {"experiments": {"x": {"loss": "minll", "sweep": {"alpha": [0.1, 1.0], "f": ["sqrt", "linear"]}}}}
    names = list(expand_experiments(config))
    assert names == [f"x__alpha={a}__f={f}" for a in ("0.1", "1") for f in ("sqrt", "linear")]


def test_an_experiment_round_trips_through_its_plain_form(default_config):
    for experiment in expand_experiments(default_config).values():
        assert st.Experiment.from_dict(experiment.to_dict()) == experiment


@pytest.mark.parametrize(
    "experiments, message",
    [
        ({"a": {"loss": "dpo", "init": "b"}}, "experiments.a.init: 'b' names no experiment"),
        ({"a": {"loss": "dpo", "init": "a"}}, "experiments.a.init: an experiment cannot start from itself"),
        ({"a": {"loss": "dpo", "init": "b"}, "b": {"loss": "dpo", "init": "a"}}, "loops through"),
        ({"sft": {"loss": "dpo"}}, "experiments.sft: the name is reserved"),
        ({"a": {"loss": "minll", "alpha": -1}}, "config key experiments.a.alpha: must be >= 0"),
        ({"a": {"loss": "nope"}}, "config key experiments.a.loss: 'nope' is not one of"),
        ({"a": {"loss": "dpo", "sweep": {"lr": [0.1, -1.0]}}}, "config key experiments.a__lr=-1.lr: must be > 0"),
        ({"a": {"loss": "dpo", "sweep": {"n_train": [10, 2.5]}}}, "experiments.a__n_train=2.5.n_train: must be a whole"),
        ({"a": {"loss": "dpo", "seed": 1}}, "config key experiments.a.seed: an experiment lists its seeds"),
        ({"a": {"loss": "dpo", "seeds": [0, 0]}}, "config key experiments.a.seeds: must be a list of distinct"),
        ({"a": {"loss": "dpo"}, "b": {"loss": "dpo", "init": "a", "seeds": [0, 1]}},
         "experiments.b.seeds: seed(s) [1] of this chained experiment have no run of 'a'"),
        ({}, "at least one experiment"),
    ],
)
def test_cross_key_checks(experiments, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand_experiments({"experiments": experiments})


def test_duplicate_experiment_names_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("experiments:\n  dpo: {loss: dpo}\n  dpo: {loss: ipo}\n")
    with pytest.raises(ConfigError, match="line 3: key 'dpo' is defined twice"):
        check_config_files([path])


# ------------------------------------------------------------------ YAML aliases and merge keys

# A merge key (`<<: *base`) in an experiment of the tiny config; `extra` goes after it.
def _tiny_with_merge(extra: str) -> str:
    text = (ROOT / "configs" / "tiny.yaml").read_text()
    text = text.replace("  unll: {loss: unll,", "  unll: &unll {loss: unll,", 1)  # the experiment, not the toy loss
    old = "  unll_small: {loss: unll, n_train: 16,"
    assert old in text and "&unll" in text
    return text.replace(old, f"  unll_small: {{<<: *unll, seeds: [1], {extra}n_train: 16,")


def _alias_bomb(depth: int, fan: int = 9) -> str:
    """``fan ** depth`` values in a file of a few hundred bytes (each level repeats the last)."""
    lines = ["  l0: &l0 [" + ", ".join(["x"] * fan) + "]"]
    lines += [f"  l{d}: &l{d} [" + ", ".join([f"*l{d - 1}"] * fan) + "]" for d in range(1, depth + 1)]
    return "paper:\n setup:\n" + "\n".join(" " + line for line in lines) + "\n"


def test_merge_keys_apply_with_explicit_keys_winning(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(_tiny_with_merge(""))
    config = load_yaml(path)
    assert config["experiments"]["unll_small"]["loss"] == "unll"  # merged
    assert config["experiments"]["unll_small"]["seeds"] == [1]  # explicit, over the merged [0, 1]
    assert _load(config).experiments["unll_small"].seeds == (1,)


def test_a_key_given_twice_beside_a_merge_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text(_tiny_with_merge("n_train: 8, "))
    line = 1 + next(i for i, text in enumerate(path.read_text().splitlines()) if "n_train: 8" in text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}, line {line}: key 'n_train' is defined twice")):
        check_config_files([path])


def test_nested_aliases_are_refused_quickly_naming_the_file(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(depth=8))  # 9 ** 8 values once expanded
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        check_config_files([path])
    assert time.perf_counter() - start < 0.5
    assert str(path) in str(err.value) and "aliases" in str(err.value) and len(str(err.value)) < 300


def test_recursive_aliases_are_refused(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}, line 1: the alias")):
        check_config_files([path])


def test_a_schema_error_on_a_large_value_stays_short(default_config):
    config = copy.deepcopy(default_config)
    shared = ["x"] * 10
    for _ in range(4):
        shared = [shared] * 10  # 10 ** 5 values, shared the way YAML aliases share them
    config["paper"] = {"setup": {"model": shared}}
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert time.perf_counter() - start < 2
    message = str(err.value)
    assert message.startswith("config key paper.setup.model: ") and message.endswith("is not of type 'string'")
    assert len(message) < 300


# The route the pipeline takes: Snakemake reads --configfile itself, then the Snakefile's checks.
@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("bomb.yaml", _alias_bomb(depth=8), "aliases expand to more than"),
        ("twice.yaml", _tiny_with_merge("n_train: 8, "), "key 'n_train' is defined twice"),
    ],
)
def test_snakemake_refuses_bad_yaml_before_any_job(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    start = time.perf_counter()
    done = snakemake(tmp_path, "-n", "--configfile", str(path), check=False, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and expected in output and str(path) in output, output[-3000:]
    assert time.perf_counter() - start < 60 and len(output) < 5000
    assert not (tmp_path / "results").exists()


def test_snakemake_accepts_merge_keys(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(_tiny_with_merge(""))
    done = snakemake(tmp_path, "-n", "--configfile", str(path), check=False, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def test_rule_resources_merge_the_defaults_the_default_entry_and_the_rule(default_config):
    config = {**copy.deepcopy(default_config), "resources": {"default": {"gpu": 0, "mem_mb": 1000}, "sft": {"gpu": 1}}}
    settings = _load(config)
    assert settings.resources_for("sft") == {"gpu": 1, "mem_mb": 1000, "cpus_per_task": 1, "runtime": 30}
    assert settings.resources_for("score")["gpu"] == 0


# ------------------------------------------------------------------ one home for every default


def _declared_sections():
    """(config path, settings class) of every section, nested ones too."""
    for name, cls in st.section_classes().items():
        yield name, cls
        for f in fields(cls):
            nested = st.base_type(st.type_hints(cls)[f.name])[0]
            if isinstance(nested, type) and issubclass(nested, st.Section):
                yield f"{name}.{st.config_key(f)}", nested


def test_the_schema_declares_no_default_of_its_own():
    def keys(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield key
                yield from keys(value)
        elif isinstance(node, list):
            for value in node:
                yield from keys(value)

    assert "default" not in set(keys(config_schema())), "defaults live in dppo.settings only"


def test_every_setting_is_declared_once_with_setting():
    """Default, range and help come from one declaration (dppo.settings.setting); a bare field
    would have no range in the schema and no line in docs/config.md."""
    classes = dict(_declared_sections()) | {"experiments.<name>": st.Experiment, "resources.<rule>": st.Resources}
    bare = [f"{where}.{f.name}" for where, cls in classes.items() for f in fields(cls)
            if "help" not in f.metadata and not (cls is st.Experiment and f.name in ("loss", "optim"))]
    assert bare == []


def _bounded_fields():
    for where, cls in _declared_sections():
        for f in fields(cls):
            for bound in ("minimum", "above", "maximum", "below"):
                if f.metadata.get(bound) is not None and st.base_type(st.type_hints(cls)[f.name])[0] in (int, float):
                    yield pytest.param(where, cls, f, bound, id=f"{where}.{f.name}-{bound}")


@pytest.mark.parametrize("where, cls, f, bound", list(_bounded_fields()))
def test_the_schema_and_the_class_refuse_the_same_value_past_each_bound(default_config, where, cls, f, bound):
    """Both come from the one declaration; a value just past the bound (or at an exclusive one)
    stops the run in the schema check and in the class a job builds from its dict."""
    limit = f.metadata[bound]
    value = {"minimum": limit - 1, "above": limit, "maximum": limit + 1, "below": limit}[bound]
    if st.base_type(st.type_hints(cls)[f.name])[0] is float:
        value = {"minimum": limit - 0.5, "maximum": limit + 0.5}.get(bound, float(value))
    config = copy.deepcopy(default_config)
    _set(config, f"{where}.{st.config_key(f)}", value)
    with pytest.raises(ConfigError, match=re.escape(f"config key {where}.{st.config_key(f)}: ")):
        validate_config(config)
    with pytest.raises(ConfigError, match=re.escape(f"config key {where}.{st.config_key(f)}: ")):
        cls.from_dict({st.config_key(f): value}, where)


def test_the_config_reference_is_generated_from_the_declarations():
    generated = reference_markdown()
    assert (ROOT / "docs" / "config.md").read_text() == generated, \
        "docs/config.md is out of date: python -m dppo.schema --docs docs/config.md"
    for where, cls in _declared_sections():
        for f in fields(cls):
            assert f"| `{st.config_key(f)}` |" in generated or isinstance(
                st.base_type(st.type_hints(cls)[f.name])[0], type) and issubclass(
                st.base_type(st.type_hints(cls)[f.name])[0], st.Section), f"{where}.{f.name}"


def test_rule_files_hold_no_defaults():
    for path in sorted((ROOT / "workflow" / "rules").glob("*.smk")) + [ROOT / "Snakefile"]:
        text = path.read_text()
        assert ".get(" not in text, f"{path.name}: a .get( default; settings come from S (dppo.settings)"
        assert "config[" not in text and "config.get" not in text, f"{path.name}: reads the raw config"


def test_every_settings_field_has_a_default_or_is_the_experiment_name():
    for cls in (st.LossSettings, st.OptimSettings, st.ModelSettings, st.TinyModelSpec, st.TaskSpec, st.DatasetSettings,
                st.DataSettings, st.GenerationSettings, st.RewardSettings, st.WinRateSettings, st.ToySettings,
                st.InitialLevels, st.PaperSettings, st.Resources):
        for f in fields(cls):
            assert f.default is not MISSING or f.default_factory is not MISSING, f"{cls.__name__}.{f.name}"


def test_training_priority_puts_starting_points_then_longer_experiments_first(default_config):
    settings = _load(default_config)
    experiments = settings.experiments
    starting_points = {e.init for e in experiments.values()} & experiments.keys()
    assert starting_points  # the default chains one experiment on another
    ranked = sorted(experiments, key=settings.training_priority, reverse=True)
    assert set(ranked[: len(starting_points)]) == starting_points
    rest = [len(experiments[name].seeds) for name in ranked[len(starting_points):]]
    assert rest == sorted(rest, reverse=True)


# ------------------------------------------------------------------ the vLLM environment


def _fake_vllm_python(tmp_path: Path, name: str = "venv") -> Path:
    """An interpreter (this one) that imports a stand-in ``vllm`` package, and this dppo (the
    environment's PYTHONPATH, as a job's vLLM subprocess inherits it)."""
    package = tmp_path / "site" / "vllm"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    python = tmp_path / name / "bin" / "python"
    python.parent.mkdir(parents=True)
    path = os.pathsep.join([str(tmp_path / "site"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    python.write_text(f'#!/bin/sh\nPYTHONPATH={path} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


def test_the_vllm_environment_is_checked_only_where_a_section_runs_vllm(default_config, tmp_path, monkeypatch):
    settings = _load(copy.deepcopy(default_config))
    assert settings.generation.engine == "transformers" and settings.reward.engine == "transformers"
    assert vllm_problem(settings, tmp_path) is None  # no vLLM: no interpreter is looked at
    python = _fake_vllm_python(tmp_path)
    config = copy.deepcopy(default_config)
    config["generation"].update(engine="vllm", vllm_python=str(python))
    assert vllm_problem(_load(config), tmp_path) is None  # it exists and imports vllm
    config["generation"]["vllm_python"] = "venv/bin/python"  # relative to the working directory
    assert vllm_problem(_load(config), tmp_path) is None
    config["generation"]["vllm_python"] = "missing/bin/python"
    with pytest.raises(ConfigError, match=re.escape("config key generation.vllm_python: 'missing/bin/python' does "
                                                    "not exist (generation.engine: vllm runs vLLM with it); build "
                                                    "the vLLM environment with `bash .ci/vllm_env.sh`")):
        check_vllm_environments(_load(config), tmp_path)
    monkeypatch.setenv("DPPO_SKIP_VLLM_CHECK", "1")  # dry runs on a machine without the environment
    check_vllm_environments(_load(config), tmp_path)


def test_vllm_scoring_is_checked_in_its_own_interpreter_only(default_config, tmp_path):
    """reward.engine: vllm names its interpreter (reward.vllm_python) as generation does; the
    score job hands the answers to it, so the pipeline's own interpreter needs no vllm."""
    (tmp_path / "rm").mkdir()
    config = copy.deepcopy(default_config)
    config["reward"].update(backend="nemotron", engine="vllm", model=str(tmp_path / "rm"),
                            vllm_python="missing/bin/python")
    with pytest.raises(ConfigError, match=re.escape(
            "config key reward.vllm_python: 'missing/bin/python' does not exist (reward.engine: vllm runs vLLM with "
            "it); build the vLLM environment with `bash .ci/vllm_env.sh`")):
        check_vllm_environments(_load(config), tmp_path)
    config["reward"]["vllm_python"] = str(_fake_vllm_python(tmp_path))
    assert vllm_problem(_load(config), tmp_path) is None  # whether this interpreter imports vllm or not
    # One interpreter for both sections: both keys named, one check.
    config["generation"].update(engine="vllm", vllm_python="missing/bin/python")
    config["reward"]["vllm_python"] = "missing/bin/python"
    assert vllm_problem(_load(config), tmp_path).startswith(
        "config key generation.vllm_python and reward.vllm_python: 'missing/bin/python' does not exist "
        "(generation.engine: vllm and reward.engine: vllm run vLLM with it)")
    # An interpreter that imports vllm but not the entry point the job hands its work to.
    bare = tmp_path / "bare" / "bin" / "python"
    bare.parent.mkdir(parents=True)
    bare.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path / "site"} exec {sys.executable} -S "$@"\n')
    bare.chmod(0o755)
    config["generation"]["engine"] = "transformers"
    config["reward"]["vllm_python"] = str(bare)
    problem = vllm_problem(_load(config), tmp_path)
    assert problem.startswith(f"config key reward.vllm_python: {str(bare)!r} cannot `import vllm, "
                              "dppo.infer.vllm_engine`: ModuleNotFoundError: No module named 'dppo'"), problem


@pytest.mark.parametrize("old, new", sorted(st.RENAMED_KEYS.items()))
def test_a_renamed_key_stops_naming_its_new_name(default_config, old, new):
    config = copy.deepcopy(default_config)
    section, key = old.split(".")
    config[section][key] = 1
    message = f"config key {old}: renamed to {new}; write {new} instead"
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(config)  # before the schema, which would only say "unexpected"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(config)
