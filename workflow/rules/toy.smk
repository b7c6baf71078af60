# The 3D-properties toy model (docs/design.md, stage 10): 4 prompts x 10 responses, 3-layer MLP, on CPU.
#
# One rule trains every scenario x seed x loss of the `toy` section (one batched computation,
# seconds); the figure and table rules read only its records, so restyling never retrains (each
# figure's CSV holds the curves it draws: dppo.report.plotting.Plot). A
# config without a `toy` section (a quick smoke run) builds no toy outputs.

TOY_RUNS = "results/toy/runs.parquet"
TOY_FIGURES = ["toy_dynamics", "toy_gradients", "toy_grid"]
TOY_TABLES = {
    "csv": "results/tables/toy_final.csv",
    "properties": "results/tables/toy_properties.csv",
    "output_rows": "results/tables/toy_output_rows.csv",
    "tex": "paper/tables/toy_final.tex",
    "properties_tex": "paper/tables/toy_properties.tex",
    "output_rows_tex": "paper/tables/toy_output_rows.tex",
    "macros": "paper/tables/toy_macros.tex",
}
TOY_OUTPUTS = (
    [f"paper/figures/{fig}.{ext}" for fig in TOY_FIGURES for ext in ("pdf", "png", "csv")] + list(TOY_TABLES.values())
    if S.toy is not None
    else []
)
TOY = S.toy.to_dict() if S.toy is not None else {}


rule toy_run:
    output:
        runs=TOY_RUNS,
        step1="results/toy/step1.parquet",
    log:
        "logs/toy/toy_run.log",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        **res("toy_run"),
    params:
        toy=TOY,
    script:
        "../scripts/toy_run.py"


rule toy_figures:
    # The three figures read the same records: one job draws them all (one process start).
    input:
        runs=TOY_RUNS,
    output:
        [f"paper/figures/{fig}.{ext}" for fig in TOY_FIGURES for ext in ("pdf", "png", "csv")],
    log:
        "logs/toy/toy_figures.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("toy_figures"),
    params:
        loss=S.toy.dynamics_loss if S.toy is not None else None,
    script:
        "../scripts/toy_figures.py"


rule toy_tables:
    input:
        runs=TOY_RUNS,
    output:
        **TOY_TABLES,
    log:
        "logs/toy/toy_tables.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("toy_tables"),
    params:
        toy=TOY,
    script:
        "../scripts/toy_tables.py"
