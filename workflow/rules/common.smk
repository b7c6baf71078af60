# Helpers shared by the rule files (the linter wants functions apart from rules).
import glob
import os
import re
import shutil

from dppo.config import rule_resources


def res(rule_name):
    """Resources of a rule from the config's `resources` table (default, then the rule's)."""
    return rule_resources(config, rule_name)


# --- used by data.smk

def dataset_path(kind):
    path = config["data"][kind]["path"]
    return SYNTHETIC_DIRS[kind] if path == "synthetic" else path


def init_model_dir():
    return "results/models/init" if config["model"]["init"] == "tiny" else config["model"]["init"]


def _local_inputs(kind):
    """The dataset / tokenizer as rule inputs when this workflow makes them (synthetic, tiny)."""
    inputs = {}
    if config["data"][kind]["path"] == "synthetic":
        inputs["dataset"] = SYNTHETIC_DIRS[kind]
    return inputs



# --- used by preference.smk

def experiment_init(name):
    init = EXPERIMENT_SPECS[name].get("init", "sft")
    return f"results/models/{init}"



# --- used by paper.smk

def _paper_runs(groups):
    """Names of the grid's experiments in the given groups (evaluated at DAG time)."""
    return [e["name"] for e in globals().get("EXPERIMENTS", []) if e["group"] in groups]


def _paper_figure(fig):
    return {
        "pdf": f"paper/figures/{fig}.pdf",
        "png": report(f"paper/figures/{fig}.png", caption=f"../report/{fig}.rst",
                      category="Figures"),
    }


def _paper_toy_inputs(wildcards):
    """The toy section's generated files (tables, figures) when toy.smk is included."""
    return [p for p in globals().get("TOY_OUTPUTS", []) if str(p).startswith("paper/")]
