# DPPO reproducible-paper pipeline. `snakemake --cores 2 all` rebuilds the embedded default;
# `snakemake --profile slurm all --configfile configs/paper.yaml` runs the poster's setup.
# Architecture (stage -> rule -> script -> module): docs/design.md. All logic lives in the
# `dppo` package; every setting and its default in dppo.settings.
import os

from snakemake.utils import min_version

from dppo.config import (
    ConfigError,
    check_local_paths,
    check_resource_rules,
    check_config_files,
    check_vllm_environments,
    load_settings,
    validate_config,
)

min_version("9.0")


# The embedded default, unless --configfile names another config: Snakemake would otherwise
# deep-merge the two, adding config.yaml's experiments to every other grid.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


# The whole config, checked and parsed once: rules read S, never `config`.
try:
    check_config_files(workflow.configfiles)
    validate_config(config)
    S = load_settings(config)
    check_local_paths(S)
    if workflow.is_main_process:  # once, not again in every job (a SLURM job parses this file too)
        check_vllm_environments(S)
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/sft.smk"
include: "workflow/rules/preference.smk"
include: "workflow/rules/rounds.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/paper.smk"


rule all:
    default_target: True
    input:
        "results/data/sft/stats.json",
        "results/data/pref/stats.json",
        "results/tables/win_rates.csv",
        round_outputs(),
        TOY_OUTPUTS,
        PAPER_OUTPUTS,


rule toy:
    input:
        TOY_OUTPUTS,


try:
    check_resource_rules(S, [r.name for r in workflow.rules])
except ConfigError as err:
    raise WorkflowError(f"invalid config: {err}") from None
