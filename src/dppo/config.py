"""Config semantics that a JSON schema cannot express: experiment expansion (sweeps), the
checks across keys, and per-rule resources.

The schema (``workflow/schemas/config.schema.yaml``) checks keys and value ranges; this
module checks what depends on several keys (an ``init`` naming a missing experiment,
duplicate names, loss parameters) and expands sweeps into one experiment each, with stable,
readable names: ``unll__f=sqrt__alpha=0.1``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import fields

from pathlib import Path

import yaml

from dppo.specs import LossConfig, OptimConfig

LOSS_KEYS = tuple(f.name for f in fields(LossConfig))
OPTIM_KEYS = tuple(f.name for f in fields(OptimConfig))
SWEEP_SEPARATOR = "__"
RESERVED_NAMES = ("sft", "init")  # model directories of the SFT stage and the initial model


class ConfigError(ValueError):
    """A config value that stops the run before any job starts; the message names the key."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys (plain YAML keeps the last one silently,
    which would drop an experiment defined twice)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"{node.start_mark.name}, line {key_node.start_mark.line + 1}: key {key!r} is defined twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def check_unique_keys(paths) -> None:
    """Raise ConfigError when a config file defines a key (e.g. an experiment name) twice."""
    for path in paths:
        with open(path) as fh:
            yaml.load(fh, Loader=_UniqueKeyLoader)


def validate_config(config: dict, schema_path: str) -> None:
    """Snakemake's ``validate()`` (fills schema defaults), with the error cut down to the
    offending key and the reason instead of a dump of the schema."""
    from snakemake.utils import validate

    try:
        validate(config, schema_path)
    except Exception:
        import jsonschema

        with open(schema_path) as fh:
            schema = yaml.safe_load(fh)
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
        if error is None:
            raise
        key = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        raise ConfigError(f"config key {key}: {error.message}") from None


def _format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_experiments(config: dict) -> dict[str, dict]:
    """Every experiment of ``config["experiments"]`` with defaults applied and sweeps
    expanded, in config order. Each value is a flat dict of loss, optimisation and run keys
    plus ``name``."""
    defaults = config.get("preference_defaults", {})
    expanded: dict[str, dict] = {}
    for base_name, entry in (config.get("experiments") or {}).items():
        entry = dict(entry or {})
        sweep = entry.pop("sweep", None) or {}
        keys = list(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
            spec = {**defaults, **entry, **dict(zip(keys, values))}
            name = SWEEP_SEPARATOR.join([base_name, *(f"{k}={_format_value(v)}" for k, v in zip(keys, values))])
            if name in expanded:
                raise ConfigError(f"experiments: the name {name!r} is produced twice")
            spec["name"] = name
            spec.setdefault("group", "main")
            spec.setdefault("label", _default_label(spec))
            expanded[name] = spec
    return expanded


def _default_label(spec: dict) -> str:
    loss = spec.get("loss", "dpo")
    return f"{loss} ({spec.get('f', 'linear')})" if loss in ("minll", "unll", "conll") else loss


def loss_config(spec: dict) -> LossConfig:
    values = {k: spec[k] for k in LOSS_KEYS if k in spec and k != "name"}
    return LossConfig(name=spec.get("loss", "dpo"), **values)


def optim_config(spec: dict) -> OptimConfig:
    return OptimConfig(**{k: spec[k] for k in OPTIM_KEYS if k in spec})


def check_config(config: dict) -> dict[str, dict]:
    """Cross-key checks; returns the expanded experiments. Raises ConfigError naming the key."""
    experiments = expand_experiments(config)
    if not experiments:
        raise ConfigError("experiments: at least one experiment is needed")
    for name, spec in experiments.items():
        where = f"experiments.{name}"
        try:
            loss_config(spec).validate()
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        if name in RESERVED_NAMES:
            raise ConfigError(f"experiments.{name}: the name is reserved for a pipeline stage ({', '.join(RESERVED_NAMES)})")
        _check_swept_run_values(spec, where)
        init = spec.get("init", "sft")
        if init != "sft":
            if init not in experiments:
                raise ConfigError(f"{where}.init: {init!r} names no experiment (valid: 'sft' or one of {sorted(experiments)})")
            if init == name:
                raise ConfigError(f"{where}.init: an experiment cannot start from itself")
    _check_no_init_cycle(experiments)
    return experiments


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_swept_run_values(spec: dict, where: str) -> None:
    """The sweepable keys the loss check does not cover: sweep lists bypass the schema's ranges."""
    n_train, lr, seed = spec.get("n_train"), spec.get("lr", 1.0), spec.get("seed", 0)
    if n_train is not None and not (_is_int(n_train) and n_train >= 1):
        raise ConfigError(f"{where}.n_train: must be a whole number >= 1 (or null for every row), got {n_train!r}")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"{where}.lr: must be a finite number > 0, got {lr!r}")
    if not _is_int(seed):
        raise ConfigError(f"{where}.seed: must be a whole number, got {seed!r}")


def _check_no_init_cycle(experiments: dict[str, dict]) -> None:
    for name in experiments:
        seen, current = {name}, experiments[name].get("init", "sft")
        while current != "sft":
            if current in seen:
                raise ConfigError(f"experiments.{name}.init: the chain of init experiments loops through {current!r}")
            seen.add(current)
            current = experiments[current].get("init", "sft")


LOCAL_PREFIXES = ("/", "./", "../", "~")  # anything else may be a hub id, checked when loaded


def check_local_paths(config: dict, workdir: str | Path = ".") -> None:
    """Stop before any job when a dataset or initial model given as a local path is missing
    (a hub id such as ``HuggingFaceTB/smoltalk`` is only checked when the job loads it)."""
    keys = [("model.init", config.get("model", {}).get("init"))]
    keys += [(f"data.{kind}.path", config.get("data", {}).get(kind, {}).get("path")) for kind in ("sft", "pref")]
    for key, value in keys:
        if isinstance(value, str) and value.startswith(LOCAL_PREFIXES):
            path = Path(workdir) / Path(value).expanduser()
            if not path.exists():
                raise ConfigError(f"config key {key}: local path {value!r} does not exist")


def rule_resources(config: dict, rule: str) -> dict:
    """Resources of ``rule``: ``resources.default`` overridden by ``resources.<rule>``."""
    table = config.get("resources", {})
    return {**table.get("default", {}), **table.get(rule, {})}
