# Figures, generated LaTeX macros and the paper PDF (docs/design.md, stage 9).
#
# Inputs are score, metric, statistics and table files only: restyling never retrains.
import glob
import os
import shutil

from dppo.evaluate.study import STUDY_RECORD, STUDY_TABLES
from dppo.settings import PENALTY_SWEEP_GROUPS

PAPER_SRC = os.path.join(workflow.basedir, "paper")
WIN_RATE_FIGURES = ["hparam_search", "paradigms", "differences"]  # from the win-rate table alone
PAPER_FIGURES = [*WIN_RATE_FIGURES, "reward_hist", "data_efficiency", "dynamics", "length_dist"]
WIN_RATES_CSV = "results/tables/win_rates.csv"
DATA_STATS = {key: f"results/data/{key}/stats.json" for key in ("sft", "pref")}
DATA_LENGTHS = {key: f"results/data/{key}/lengths.parquet" for key in ("sft", "pref")}
# The runs a figure may pick from (its script picks with dppo.evaluate.run_selection.pick_runs).
PICKABLE_RUNS = experiments_in(PENALTY_SWEEP_GROUPS)
# No TeX -> the PDF rule only writes paper/build.log saying how to install it, so
# `snakemake all` never fails for want of TeX; once TeX is installed paper/main.pdf is
# missing and the rule reruns.
PAPER_HAVE_TEX = bool(shutil.which("latexmk") or shutil.which("pdflatex"))
PAPER_PDF_OUTPUTS = {"status": "paper/build.log"}
if PAPER_HAVE_TEX:
    PAPER_PDF_OUTPUTS["pdf"] = "paper/main.pdf"

PAPER_TABLES = [
    "paper/tables/macros.tex",
    "paper/tables/win_rates.tex",
    "paper/tables/claims.tex",
    "paper/tables/penalty_scale.tex",
]
# The evidence section reads a study's tables committed to the repository (make study writes
# them; dppo.report.evidence): relative paths are the repository's, whatever --directory says.
EVIDENCE = {}
for key in ("evidence", "evidence_rerun"):
    if getattr(S.paper, key):
        EVIDENCE[key] = os.path.join(workflow.basedir, getattr(S.paper, key))
EVIDENCE_OUTPUTS = (
    {"macros": "paper/tables/study_macros.tex", "table": "paper/tables/study.tex", **figure_outputs("dose_response")}
    if EVIDENCE
    else {}
)
PAPER_OUTPUTS = (
    [f"paper/figures/{fig}.{ext}" for fig in PAPER_FIGURES for ext in ("pdf", "png", "csv")]
    + PAPER_TABLES
    + list(PAPER_PDF_OUTPUTS.values())
    + [str(p) for p in EVIDENCE_OUTPUTS.values()]
    + ([str(p) for p in figure_outputs("ygen_drift").values()] if ROUND_EXPERIMENTS else [])
)


# The two runs the reward histogram and the dynamics compare (dppo.evaluate.run_selection.pick_runs).
PICKED = {"baseline": S.win_rate.baseline, "dppo": S.claims.dppo}


rule paper_macros:
    input:
        **DATA_STATS,
        win_rates=WIN_RATES_CSV,
        prompts="results/tables/prompt_scores.parquet",
        claims="results/tables/claims.csv",
        premise="results/tables/premise.json",
        penalty="results/tables/penalty_scale.csv",
    output:
        "paper/tables/macros.tex",
    log:
        "logs/paper_macros/paper_macros.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("paper_macros"),
    params:
        **PICKED,
        setup=S.paper.setup,
    script:
        "../scripts/paper_macros.py"


rule fig_win_rates:
    # The three figures drawn from the win-rate table alone: one job draws them all.
    input:
        win_rates=WIN_RATES_CSV,
    output:
        **{f"{fig}_{ext}": path for fig in WIN_RATE_FIGURES for ext, path in figure_outputs(fig).items()},
    log:
        "logs/fig_win_rates/fig_win_rates.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("fig_win_rates"),
    script:
        "../scripts/fig_win_rates.py"


rule fig_reward_hist:
    # The best penalty variant is known only from the win rates, so every candidate's
    # scores are inputs; the script picks (dppo.evaluate.run_selection.pick_runs).
    input:
        win_rates=WIN_RATES_CSV,
        sft="results/scores/sft.parquet",
        scores=expand("results/scores/{name}.parquet", name=PICKABLE_RUNS),
    output:
        **figure_outputs("reward_hist"),
    log:
        "logs/fig_reward_hist/fig_reward_hist.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("fig_reward_hist"),
    params:
        **PICKED,
    script:
        "../scripts/fig_reward_hist.py"


rule fig_data_efficiency:
    input:
        win_rates=WIN_RATES_CSV,
        pref_stats=DATA_STATS["pref"],
    output:
        **figure_outputs("data_efficiency"),
    log:
        "logs/fig_data_efficiency/fig_data_efficiency.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("fig_data_efficiency"),
    script:
        "../scripts/fig_data_efficiency.py"


rule fig_dynamics:
    input:
        win_rates=WIN_RATES_CSV,
        metrics=expand("results/metrics/{name}.jsonl", name=PICKABLE_RUNS),
    output:
        **figure_outputs("dynamics"),
    log:
        "logs/fig_dynamics/fig_dynamics.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("fig_dynamics"),
    params:
        **PICKED,
    script:
        "../scripts/fig_dynamics.py"


rule fig_length_dist:
    input:
        sft_stats=DATA_STATS["sft"],
        pref_stats=DATA_STATS["pref"],
        sft_lengths=DATA_LENGTHS["sft"],
        pref_lengths=DATA_LENGTHS["pref"],
    output:
        **figure_outputs("length_dist"),
    log:
        "logs/fig_length_dist/fig_length_dist.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("fig_length_dist"),
    script:
        "../scripts/fig_length_dist.py"


rule fig_ygen_drift:
    # How far y_gen moved in each round of the on-policy experiments (only where some trains in rounds).
    input:
        drift="results/tables/ygen_drift.csv",
    output:
        **figure_outputs("ygen_drift"),
    log:
        "logs/fig_ygen_drift/fig_ygen_drift.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("fig_ygen_drift"),
    script:
        "../scripts/fig_ygen_drift.py"


rule study_evidence:
    # The paper's evidence section from a study's committed tables (and its rerun with other kernels).
    input:
        **{key: [f"{d}/{t}.csv" for t in STUDY_TABLES] + [f"{d}/{STUDY_RECORD}"] for key, d in EVIDENCE.items()},
    output:
        **EVIDENCE_OUTPUTS,
    log:
        "logs/study_evidence/study_evidence.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("study_evidence"),
    params:
        directories=EVIDENCE,
        source=S.paper.evidence,
        main=S.claims.dppo,
    script:
        "../scripts/study_evidence.py"


rule paper_pdf:
    input:
        # The LaTeX sources come from the repository, the generated figures and tables from
        # the working directory (the same place unless run with --directory).
        tex=f"{PAPER_SRC}/main.tex",
        bib=f"{PAPER_SRC}/references.bib",
        tables=PAPER_TABLES,
        figures=expand("paper/figures/{fig}.pdf", fig=PAPER_FIGURES),
        sections=sorted(glob.glob(f"{PAPER_SRC}/sections/*.tex")),
        toy=[p for p in TOY_OUTPUTS if p.startswith("paper/")],
        evidence=[str(p) for p in EVIDENCE_OUTPUTS.values()],
        drift=["paper/figures/ygen_drift.pdf"] if ROUND_EXPERIMENTS else [],
    output:
        **PAPER_PDF_OUTPUTS,
    log:
        "logs/paper_pdf/paper_pdf.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("paper_pdf"),
    params:
        build_dir="results/paper_build",
        src_dir=lambda wc, input: os.path.dirname(input.tex),
    script:
        "../scripts/build_pdf.py"
