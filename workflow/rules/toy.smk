# The 3D-properties toy model (DESIGN stage 10): 4 prompts x 10 responses, 3-layer MLP, on CPU.
#
# One rule trains every scenario x seed x loss of config["toy"]; the figure and table rules
# read only its records, so restyling never retrains. The including Snakefile adds
# TOY_OUTPUTS to `rule all` (paper.smk picks up its paper/ files).

TOY_RUNS = "results/toy/runs.parquet"
TOY_FIGURES = ["toy_dynamics", "toy_gradients", "toy_grid"]
TOY_TABLES = {
    "csv": "results/tables/toy_final.csv",
    "properties": "results/tables/toy_properties.csv",
    "tex": "paper/tables/toy_final.tex",
    "macros": "paper/tables/toy_macros.tex",
}
# A config without a `toy` section (e.g. a quick smoke run) builds no toy outputs.
TOY_OUTPUTS = (
    [f"paper/figures/{fig}.{ext}" for fig in TOY_FIGURES for ext in ("pdf", "png")]
    + list(TOY_TABLES.values())
    if "toy" in config
    else []
)


rule toy_run:
    output:
        runs=TOY_RUNS,
        step1="results/toy/step1.parquet",
    params:
        toy=config.get("toy", {}),
    log:
        "logs/toy/toy_run.log",
    threads: 1
    resources:
        **res("toy_run"),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/toy_run.py"


rule toy_fig_dynamics:
    input:
        runs=TOY_RUNS,
    output:
        pdf="paper/figures/toy_dynamics.pdf",
        png="paper/figures/toy_dynamics.png",
    params:
        figure="dynamics",
        loss=config.get("toy", {}).get("dynamics_loss", "dpo"),
    log:
        "logs/toy/toy_fig_dynamics.log",
    threads: 1
    resources:
        **res("toy_fig_dynamics"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/toy_figure.py"


rule toy_fig_gradients:
    input:
        runs=TOY_RUNS,
    output:
        pdf="paper/figures/toy_gradients.pdf",
        png="paper/figures/toy_gradients.png",
    params:
        figure="gradients",
        loss=config.get("toy", {}).get("dynamics_loss", "dpo"),
    log:
        "logs/toy/toy_fig_gradients.log",
    threads: 1
    resources:
        **res("toy_fig_gradients"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/toy_figure.py"


rule toy_fig_grid:
    input:
        runs=TOY_RUNS,
    output:
        pdf="paper/figures/toy_grid.pdf",
        png="paper/figures/toy_grid.png",
    params:
        figure="grid",
    log:
        "logs/toy/toy_fig_grid.log",
    threads: 1
    resources:
        **res("toy_fig_grid"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/toy_figure.py"


rule toy_tables:
    input:
        runs=TOY_RUNS,
    output:
        **TOY_TABLES,
    params:
        toy=config.get("toy", {}),
        loss=config.get("toy", {}).get("dynamics_loss", "dpo"),
    log:
        "logs/toy/toy_tables.log",
    threads: 1
    resources:
        **res("toy_tables"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/toy_tables.py"
