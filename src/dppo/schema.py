"""The config's JSON schema and its reference page, both generated from the settings classes
(dppo.settings: each field's default, range, choices and help are declared there once).

    python -m dppo.schema                 # the JSON schema, for an editor or another tool
    python -m dppo.schema --docs FILE     # the reference of every key (docs/config.md)

:func:`config_schema` is what :func:`dppo.config.validate_config` checks a config against
before any job; what the schema cannot say (cross-key rules, NaN) the classes check when built.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import MISSING, fields
from typing import Any

from dppo.settings import (
    SWEEP_KEYS,
    Experiment,
    LossSettings,
    OptimSettings,
    PipelineSettings,
    Resources,
    Section,
    base_type,
    choices_of,
    config_key,
    config_value,
    type_hints,
)

# JSON Schema names of the Python types a setting may have.
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object"}
NAME_PATTERN = "^[A-Za-z0-9_.-]+$"  # experiment names: they become file names
RULE_PATTERN = "^[a-z_]+$"


def docstring(cls) -> str:
    """A class's own docstring on one line ("" for the signature a dataclass writes when it has none)."""
    text = " ".join((cls.__doc__ or "").split())
    return "" if text.startswith(f"{cls.__name__}(") else text


def field_schema(cls, f) -> dict[str, Any]:
    """One field's schema, from its declaration."""
    meta = f.metadata
    hint, optional = base_type(type_hints(cls)[f.name])
    nested = hint if isinstance(hint, type) and issubclass(hint, Section) else None
    mapped = typing.get_args(hint)[-1] if typing.get_args(hint) else None
    if nested is not None:
        node = section_schema(nested)
    elif isinstance(mapped, type) and issubclass(mapped, Section):  # a mapping of sections
        node = {**(meta.get("schema") or {}), "additionalProperties": section_schema(mapped)}
    elif meta.get("schema") is not None:
        node = dict(meta["schema"])
    elif choices_of(f) is not None:
        node = {"enum": [*choices_of(f), *([None] if optional else [])]}
    else:
        node = {"type": _JSON_TYPES[hint]}
        bounds = {"minimum": "minimum", "above": "exclusiveMinimum", "maximum": "maximum", "below": "exclusiveMaximum"}
        for name, keyword in bounds.items():
            if meta.get(name) is not None:
                node["minLength" if hint is str else keyword] = meta[name]
        if optional:
            node["type"] = [node["type"], "null"]
    if meta.get("help"):
        node["description"] = meta["help"]
    return node


def section_schema(cls, keys=None) -> dict[str, Any]:
    """A settings class as a closed object (unknown keys refused); ``keys``: only these fields."""
    chosen = [f for f in fields(cls) if keys is None or config_key(f) in keys]
    node: dict[str, Any] = {"type": "object", "additionalProperties": False,
                            "properties": {config_key(f): field_schema(cls, f) for f in chosen}}
    required = [config_key(f) for f in chosen if f.metadata.get("required")]
    if required:
        node["required"] = required
    if keys is None and docstring(cls):
        node["description"] = docstring(cls)
    return node


def experiment_schema() -> dict[str, Any]:
    """An experiment is one flat mapping: the loss, optimisation and run keys side by side, and
    a sweep (key -> values, one experiment per combination)."""
    properties = {}
    for cls, keys in ((LossSettings, None), (OptimSettings, Experiment.OPTIM_KEYS), (Experiment, Experiment.RUN_KEYS)):
        properties.update(section_schema(cls, keys)["properties"])
    properties["sweep"] = {"type": "object", "description": "key -> list of values; one experiment per combination",
                           "propertyNames": {"enum": list(SWEEP_KEYS)},
                           "additionalProperties": {"type": "array", "minItems": 1}}
    return {"type": "object", "additionalProperties": False, "properties": properties}


def config_schema() -> dict[str, Any]:
    """The schema of a whole config file."""
    experiment = experiment_schema()
    properties: dict[str, Any] = {}
    for f in fields(PipelineSettings):
        hint, _ = base_type(type_hints(PipelineSettings)[f.name])
        if isinstance(hint, type) and issubclass(hint, Section):
            properties[f.name] = section_schema(hint)
    properties.update({
        "preference_defaults": {**experiment, "description": "keys every experiment takes unless it sets its own"},
        "experiments": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": NAME_PATTERN},
                        "additionalProperties": experiment, "description": "name -> experiment"},
        "only_experiments": {"type": ["array", "null"], "items": {"type": "string"},
                             "description": "run only these experiments of the grid, by name or sweep name (null: all)"},
        "resources": {"type": "object", "propertyNames": {"pattern": RULE_PATTERN},
                      "additionalProperties": section_schema(Resources),
                      "description": "rule name (or default) -> its SLURM resources"},
        "world": field_schema(PipelineSettings, next(f for f in fields(PipelineSettings) if f.name == "world")),
    })
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "description": "Configuration of the DPPO pipeline, generated from dppo.settings (python -m dppo.schema)",
            "type": "object", "additionalProperties": False, "properties": properties,
            "required": ["model", "data", "experiments", "reward"]}


# ----------------------------------------------------------------------------- reference page


def _default(f) -> str:
    if f.default_factory is not MISSING:
        value = config_value(f.default_factory())
    elif f.default is MISSING:
        return "(required)"
    else:
        value = config_value(f.default)
    return f"`{json.dumps(value)}`"


def _allowed(node: dict) -> str:
    if "enum" in node:
        return " \\| ".join("null" if v is None else str(v) for v in node["enum"])
    parts = [f"{symbol} {node[k]}" for k, symbol in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                                                      ("exclusiveMaximum", "<"), ("minLength", "length >="))
             if k in node]
    kind = node.get("type", "")
    kind = " or ".join(kind) if isinstance(kind, list) else kind
    return ", ".join([kind, *parts]) if kind else ", ".join(parts)


def _rows(cls, keys=None) -> list[str]:
    rows = []
    for f in fields(cls):
        if keys is not None and config_key(f) not in keys:
            continue
        node = field_schema(cls, f)
        hint, _ = base_type(type_hints(cls)[f.name])
        if isinstance(hint, type) and issubclass(hint, Section):
            continue  # its own table
        help_text = node.get("description", "").replace("|", "\\|")
        rows.append(f"| `{config_key(f)}` | {_default(f)} | {_allowed(node)} | {help_text} |")
    return rows


def _table(title: str, cls, keys=None, note: str | None = None) -> list[str]:
    """A section's table, under ``note`` (None: the class's docstring)."""
    note = docstring(cls) if note is None else note
    lines = [f"## `{title}`", "", *([note, ""] if note else [])]
    return lines + ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |", *_rows(cls, keys), ""]


def reference_markdown() -> str:
    """docs/config.md: every key of a config, its default, range and meaning."""
    lines = ["# Config reference", "",
             "Generated by `python -m dppo.schema --docs docs/config.md` from the declarations in",
             "`src/dppo/settings.py` (the one home of every default, range and help text); a test fails",
             "when this page is out of date. A key a config leaves out takes the default below.", ""]
    for f in fields(PipelineSettings):
        hint, _ = base_type(type_hints(PipelineSettings)[f.name])
        if not (isinstance(hint, type) and issubclass(hint, Section)):
            continue
        lines += _table(f.name, hint)
        for sub in fields(hint):
            sub_hint, _ = base_type(type_hints(hint)[sub.name])
            if isinstance(sub_hint, type) and issubclass(sub_hint, Section):
                lines += _table(f"{f.name}.{config_key(sub)}", sub_hint, note=sub.metadata.get("help", ""))
    note = ("Under `experiments: {name: {...}}` and `preference_defaults`: one flat mapping of the loss, "
            "optimisation and run keys below, plus `sweep: {key: [values]}` (keys: "
            f"{', '.join(SWEEP_KEYS)}) for one experiment per combination. `toy.losses` entries take the loss keys.")
    lines += _table("experiments.<name>: loss", LossSettings, note=note)
    lines += _table("experiments.<name>: optimisation", OptimSettings, Experiment.OPTIM_KEYS, note="")
    lines += _table("experiments.<name>: run", Experiment, Experiment.RUN_KEYS, note="")
    lines += _table("resources.<rule>", Resources)
    top = config_schema()["properties"]
    lines += ["## Top-level keys", "", "| key | default | allowed | meaning |", "| --- | --- | --- | --- |",
              f"| `world` | `0` | {_allowed(top['world'])} | {top['world']['description']} |",
              f"| `only_experiments` | `null` | {_allowed(top['only_experiments'])} | "
              f"{top['only_experiments']['description']} |", ""]
    return "\n".join(line.replace("|  |", "| |") for line in lines).rstrip() + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", metavar="FILE", help="write the reference page (docs/config.md) instead")
    args = parser.parse_args(argv)
    if args.docs:
        with open(args.docs, "w") as fh:
            fh.write(reference_markdown())
    else:
        json.dump(config_schema(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
