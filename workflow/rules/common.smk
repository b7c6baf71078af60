# Paths and helpers every rule file uses; defined before the rule files that read them
# (the linter wants functions apart from rules). Settings come from S (dppo.settings).
import re

# Raw synthetic datasets in the hub layouts (written by make_synthetic where a path is "synthetic").
SYNTHETIC_DIRS = {"sft": "results/data/raw/smoltalk", "pref": "results/data/raw/ultrafeedback"}
INIT_MODEL_DIR = "results/models/init" if S.model.is_tiny else S.model.init
EXPERIMENT_NAMES = list(S.experiments)
EVAL_MODELS = ["sft", *EXPERIMENT_NAMES]
PENALIZED_EXPERIMENTS = [name for name, e in S.experiments.items() if e.loss.needs_gen]


def res(rule_name):
    """Resources of a rule (dppo.settings.PipelineSettings.resources_for)."""
    return S.resources_for(rule_name)


def threads_of(rule_name):
    return res(rule_name)["cpus_per_task"]


def one_of(names):
    """A wildcard constraint matching exactly one of ``names``."""
    return "|".join(re.escape(n) for n in names)


def dataset_settings(kind):
    """The dataset section of ``kind`` with its path resolved ("synthetic" -> the generated files)."""
    dataset = getattr(S.data, kind)
    path = SYNTHETIC_DIRS[kind] if dataset.is_synthetic else dataset.path
    return {**dataset.to_dict(), "path": path}


def built_locally(kind):
    """The raw dataset of ``kind`` as a rule input when this workflow generates it."""
    return {"dataset": SYNTHETIC_DIRS[kind]} if getattr(S.data, kind).is_synthetic else {}


def tiny_model_input():
    return INIT_MODEL_DIR if S.model.is_tiny else []


def experiment_init(name):
    return f"results/models/{S.experiments[name].init}"


def experiments_in(groups):
    """Names of the grid's experiments in the given figure groups."""
    return [name for name, e in S.experiments.items() if e.group in groups]


def figure_outputs(fig):
    """A figure's PDF and PNG and the CSV of what it draws (dppo.report.plotting.Plot)."""
    return {
        "pdf": f"paper/figures/{fig}.pdf",
        "png": report(f"paper/figures/{fig}.png", caption=f"../report/{fig}.rst", category="Figures"),
        "csv": f"paper/figures/{fig}.csv",
    }
