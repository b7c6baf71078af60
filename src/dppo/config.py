"""Reading a config: duplicate keys, the schema, sweep expansion and the checks across keys,
into one :class:`dppo.settings.PipelineSettings`.

The schema (generated from the settings classes by :mod:`dppo.schema`) checks key names,
types and ranges; the settings classes check them too when built (and hold every default,
range and help text); this module checks what depends on several keys (an ``init`` naming a missing experiment, duplicate names) and expands sweeps
into one experiment each, with stable, readable names: ``unll__f=sqrt__alpha=0.1``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path
from typing import Any, Mapping

import yaml

from dppo.schema import config_schema
from dppo.settings import (
    RENAMED_KEYS,
    ConfigError,
    Experiment,
    FieldError,
    PipelineSettings,
    Resources,
    ToySettings,
    parse,
    section_classes,
)

__all__ = ["ConfigError", "load_settings", "expand_experiments", "check_config_files", "load_yaml", "validate_config",
           "check_local_paths", "check_resource_rules", "check_renamed_keys", "check_vllm_environments",
           "vllm_problem"]

SWEEP_SEPARATOR = "__"
RESERVED_NAMES = ("sft", "init")  # model directories of the SFT stage and the initial model


# Expanded YAML nodes a config may hold: the shipped ones hold a few hundred, while nested
# aliases can make a small file expand exponentially.
MAX_CONFIG_NODES = 100_000


class _ConfigLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice in one mapping (plain YAML keeps the last
    one silently, which would drop an experiment defined twice) and aliases that expand past
    MAX_CONFIG_NODES. Merge keys (``<<: *base``) work as usual: explicit keys win. Both checks
    run on the composed nodes, before merge keys are flattened into the mappings."""

    def compose_mapping_node(self, anchor):
        node = super().compose_mapping_node(anchor)
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                # a merge key has no constructor of its own; two in one mapping are refused too
                key = "<<" if key_node.tag == "tag:yaml.org,2002:merge" else self.construct_object(key_node)
                if key in seen:
                    raise ConfigError(f"{key_node.start_mark.name}, line {key_node.start_mark.line + 1}: "
                                      f"key {key!r} is defined twice")
                seen.add(key)
        return node

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_CONFIG_NODES:
            raise ConfigError(f"{node.start_mark.name}: the YAML aliases expand to more than {MAX_CONFIG_NODES} "
                              "values (aliases nested in aliases?)")
        return node


def _expanded_size(node, sizes: dict) -> int:
    """The number of nodes once every alias is replaced by a copy of its anchor (an alias is the
    anchor's node itself, hence the memo)."""
    if id(node) in sizes:
        if sizes[id(node)] is None:
            raise ConfigError(f"{node.start_mark.name}, line {node.start_mark.line + 1}: the alias refers to a "
                              "value that contains it")
        return sizes[id(node)]
    sizes[id(node)] = None
    children = node.value if isinstance(node, yaml.SequenceNode) else ()
    if isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def load_yaml(path) -> Any:
    """A config file read with the checks of :class:`_ConfigLoader` (ConfigError naming the file)."""
    with open(path) as fh:
        return yaml.load(fh, Loader=_ConfigLoader)


def check_config_files(paths) -> None:
    """Raise ConfigError when a config file defines a key (e.g. an experiment name) twice or its
    aliases expand past MAX_CONFIG_NODES (before anything walks the expanded config)."""
    for path in paths:
        load_yaml(path)


def validate_config(config: dict) -> None:
    """The schema check (:func:`dppo.schema.config_schema`), with the error cut down to the
    offending key and the reason. Not Snakemake's ``validate()``: its error prints the whole
    config and the schema."""
    import jsonschema

    check_renamed_keys(config)  # before the schema, whose message cannot name the new key
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(config_schema()).iter_errors(config))
    if error is not None:
        key = ".".join(str(part) for part in error.absolute_path) or "<top level>"
        raise ConfigError(f"config key {key}: {_shorten(error.message)}")


def check_renamed_keys(config: Mapping[str, Any]) -> None:
    """Raise ConfigError naming the new key when the config uses one an earlier config spelled
    otherwise (dppo.settings.RENAMED_KEYS): a clearer stop than "unknown key"."""
    for old, new in RENAMED_KEYS.items():
        section, key = old.split(".", 1)
        values = config.get(section)
        if isinstance(values, Mapping) and key in values:
            raise ConfigError(f"config key {old}: renamed to {new}; write {new} instead")


def _shorten(message: str, limit: int = 200) -> str:
    """jsonschema's message quotes the offending value whole: keep its start and the reason."""
    return message if len(message) <= limit else f"{message[:limit // 2]} ... {message[-limit // 2:]}"


def _format_value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def expand_experiments(config: Mapping[str, Any]) -> dict[str, Experiment]:
    """Every experiment of ``config["experiments"]``, with ``preference_defaults`` under it and
    sweeps expanded (one experiment per combination), in config order; only those
    ``only_experiments`` keeps."""
    defaults = dict(config.get("preference_defaults") or {})
    expanded: dict[str, Experiment] = {}
    for base_name, entry in (config.get("experiments") or {}).items():
        entry = dict(entry or {})
        sweep = entry.pop("sweep", None) or {}
        keys = list(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)) if keys else [()]:
            name = SWEEP_SEPARATOR.join([base_name, *(f"{k}={_format_value(v)}" for k, v in zip(keys, values))])
            if name in expanded:
                raise ConfigError(f"experiments: the name {name!r} is produced twice")
            if name in RESERVED_NAMES:
                raise ConfigError(f"experiments.{name}: the name is reserved for a pipeline stage ({', '.join(RESERVED_NAMES)})")
            flat = {**defaults, **entry, **dict(zip(keys, values))}
            expanded[name] = Experiment.from_flat(name, flat, f"experiments.{name}")
    expanded = keep_experiments(expanded, config.get("only_experiments"))
    if not expanded:
        raise ConfigError("experiments: at least one experiment is needed")
    _check_inits(expanded)
    return expanded


def _check_inits(experiments: Mapping[str, Experiment]) -> None:
    for name, experiment in experiments.items():
        init = experiment.init
        if init != "sft" and init not in experiments:
            raise ConfigError(f"experiments.{name}.init: {init!r} names no experiment (valid: 'sft' or one of {sorted(experiments)})")
        if init == name:
            raise ConfigError(f"experiments.{name}.init: an experiment cannot start from itself")
        if init != "sft" and set(experiment.seeds) - set(experiments[init].seeds):
            missing = sorted(set(experiment.seeds) - set(experiments[init].seeds))
            raise ConfigError(f"experiments.{name}.seeds: seed(s) {missing} of this chained experiment have no run of "
                              f"{init!r} to start from (its seeds: {list(experiments[init].seeds)})")
        seen, current = {name}, init
        while current != "sft":
            if current in seen:
                raise ConfigError(f"experiments.{name}.init: the chain of init experiments loops through {current!r}")
            seen.add(current)
            current = experiments[current].init


def load_settings(config: Mapping[str, Any]) -> PipelineSettings:
    """The checked settings of a config (after :func:`validate_config`). Raises ConfigError
    naming the key."""
    check_renamed_keys(config)
    sections = {key: cls.from_dict(config.get(key), key) for key, cls in section_classes().items() if key != "toy"}
    resources = {rule: dict(entry or {}) for rule, entry in (config.get("resources") or {}).items()}
    for rule, entry in resources.items():
        parse(Resources, entry, f"resources.{rule}")
    experiments = expand_experiments(config)
    named = [("win_rate.baseline", sections["win_rate"].baseline)]
    named += [(f"claims.{key}", getattr(sections["claims"], key)) for key in ("dppo", "small_subset", "chained")]
    for key, name in named:
        if name is not None and name not in experiments:
            raise ConfigError(f"config key {key}: {name!r} names no experiment (experiments: {', '.join(experiments)})")
    if sections["data"].pref.is_synthetic:  # the data size is known before any job: check n_train now
        rows = sections["synthetic"].n_pref_train
        for name, experiment in experiments.items():
            if experiment.n_train is not None and experiment.n_train > rows:
                raise ConfigError(f"config key experiments.{name}.n_train: {experiment.n_train} is more than the "
                                  f"{rows} synthetic preference rows (synthetic.n_pref_train)")
    settings = PipelineSettings(
        **sections,
        experiments=experiments,
        toy=ToySettings.from_dict(config["toy"], "toy") if config.get("toy") is not None else None,
        resources=resources,
    )
    try:
        return settings.in_world(config.get("world", 0))
    except FieldError as err:
        raise ConfigError(f"config key world: {err.message}") from None


def keep_experiments(experiments: dict[str, Experiment], names) -> dict[str, Experiment]:
    """Only the experiments ``names`` lists (config key ``only_experiments``; None: all), in config
    order: an experiment's name, or the name of a sweep (every experiment it expands to). A listed
    name must exist, and a kept experiment's init must be kept too."""
    if names is None:
        return experiments

    def base(name: str) -> str:
        return name.split(SWEEP_SEPARATOR)[0]

    unknown = [n for n in names if n not in experiments and n not in {base(e) for e in experiments}]
    if unknown:
        raise ConfigError(f"config key only_experiments: {unknown[0]!r} names no experiment "
                          f"(experiments: {', '.join(experiments)})")
    kept = {name: e for name, e in experiments.items() if name in set(names) or base(name) in set(names)}
    for name, e in kept.items():
        if e.init != "sft" and e.init not in kept:
            raise ConfigError(f"config key only_experiments: {name!r} starts from {e.init!r}, which is not kept")
    return kept


def merged_config(configs) -> dict:
    """Config mappings merged as Snakemake merges its --configfile list: later files win, key by
    key, into nested mappings."""
    merged: dict = {}

    def update(into: dict, new: Mapping) -> None:
        for key, value in new.items():
            if isinstance(value, Mapping):
                # a fresh mapping, never the input's: a later file must not change an earlier one
                if not isinstance(into.get(key), dict):
                    into[key] = {}
                update(into[key], value)
            else:
                into[key] = value

    for config in configs:
        update(merged, config or {})
    return merged


def check_resource_rules(settings: PipelineSettings, rule_names) -> None:
    """A ``resources`` entry must name a rule (or ``default``): a misspelt rule would silently
    run without the GPU it asks for."""
    valid = set(rule_names) | {"default"}
    unknown = sorted(set(settings.resources) - valid)
    if unknown:
        raise ConfigError(f"config key resources.{unknown[0]}: no rule of that name (rules: {', '.join(sorted(valid))})")


LOCAL_PREFIXES = ("/", "./", "../", "~")  # anything else may be a hub id, checked when loaded


def check_local_paths(settings: PipelineSettings, workdir: str | Path = ".") -> None:
    """Stop before any job when a dataset or initial model given as a local path is missing
    (a hub id such as ``HuggingFaceTB/smoltalk`` is only checked when the job loads it)."""
    keys = [("model.init", settings.model.init), ("data.sft.path", settings.data.sft.path),
            ("data.pref.path", settings.data.pref.path)]
    if settings.reward.model:
        keys.append(("reward.model", settings.reward.model))
    for key, value in keys:
        if isinstance(value, str) and value.startswith(LOCAL_PREFIXES):
            path = Path(workdir) / Path(value).expanduser()
            if not path.exists():
                raise ConfigError(f"config key {key}: local path {value!r} does not exist")


VLLM_ENV_COMMAND = "bash .ci/vllm_env.sh"
# What a vLLM job imports there: vllm, and the entry point the job hands its work to.
VLLM_IMPORTS = "import vllm, dppo.infer.vllm_engine"
VLLM_IMPORT_TIMEOUT_S = 300  # `import vllm` from a cold shared file system can take a minute
SKIP_VLLM_CHECK = "DPPO_SKIP_VLLM_CHECK"  # =1: for dry runs on machines without the vLLM environment


def _vllm_import_problem(python: str, workdir: Path) -> str | None:
    """Why ``python`` cannot run VLLM_IMPORTS (its last line of stderr), or None."""
    try:
        done = subprocess.run([python, "-c", VLLM_IMPORTS], cwd=workdir, capture_output=True, text=True,
                              timeout=VLLM_IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"`{VLLM_IMPORTS}` did not finish within {VLLM_IMPORT_TIMEOUT_S} s"
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"exit status {done.returncode}"


def vllm_problem(settings: PipelineSettings, workdir: str | Path = ".") -> str | None:
    """Why a section that runs vLLM could not, or None (also None when none does).

    vLLM pins its own torch, so each section that runs it (``generation.engine: vllm``,
    ``reward.engine: vllm``) names the interpreter of its environment, ``<section>.vllm_python``,
    a path relative to the working directory as the jobs read it; the job hands its work to
    that interpreter (dppo.infer.vllm_engine), so the pipeline's own environment needs no vllm.
    Each named interpreter must exist and import vllm and that entry point (VLLM_IMPORTS, in
    the environment the jobs inherit): one subprocess per interpreter."""
    users: dict[str, list[str]] = {}  # interpreter -> the sections that run vLLM with it
    for section in ("generation", "reward"):
        options = getattr(settings, section)
        if options.engine == "vllm":
            users.setdefault(options.vllm_python, []).append(section)
    hint = f"build the vLLM environment with `{VLLM_ENV_COMMAND}` (it creates .venv-vllm; VLLM_GPU=1 on a GPU machine)"
    for value, sections in users.items():
        key = " and ".join(f"{s}.vllm_python" for s in sections)
        where = " and ".join(f"{s}.engine: vllm" for s in sections)
        where += f" run{'s' if len(sections) == 1 else ''} vLLM with it"
        python = Path(workdir) / Path(value).expanduser()
        if not python.exists():
            return f"config key {key}: {value!r} does not exist ({where}); {hint}"
        why = _vllm_import_problem(str(python.absolute()), Path(workdir))
        if why is not None:
            return f"config key {key}: {value!r} cannot `{VLLM_IMPORTS}`: {why} ({where}); {hint}"
    return None


def check_vllm_environments(settings: PipelineSettings, workdir: str | Path = ".") -> None:
    """Stop before any job when a section runs vLLM (``generation.engine: vllm``,
    ``reward.engine: vllm``) and its interpreter is missing or cannot import vllm
    (:func:`vllm_problem`); else the pipeline would train every model and fail at generation
    or scoring. ``DPPO_SKIP_VLLM_CHECK=1`` skips the check: for dry runs on machines without
    the vLLM environment."""
    if os.environ.get(SKIP_VLLM_CHECK) == "1":
        return
    problem = vllm_problem(settings, workdir)
    if problem is not None:
        raise ConfigError(f"{problem} ({SKIP_VLLM_CHECK}=1 skips this check: for dry runs on a machine without it)")
