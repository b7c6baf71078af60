"""Figure 'dynamics': log-probs over training, DPO and the penalty variant's difference from it."""
from pathlib import Path

from dppo.evaluate.run_selection import picked_files
from dppo.report.plotting import fig_dynamics
from dppo.report.result_files import read_metrics, read_win_rates
from dppo.runtime.stage import stage

with stage(snakemake):
    # picked_files lists DPO first: the baseline the other run is drawn against
    runs = picked_files(read_win_rates(snakemake.input.win_rates), snakemake.input.metrics,
                        snakemake.params.baseline, snakemake.params.dppo)
    plot = fig_dynamics({title: read_metrics(path) for title, path in runs.items()},
                        runs={title: Path(path).stem for title, path in runs.items()})
    plot.save(snakemake.output.pdf, snakemake.output.png, snakemake.output.csv)
