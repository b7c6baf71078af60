"""Figure 'dynamics': log-probs over training, DPO vs the best penalty variant."""
from dppo.evaluate.run_selection import picked_files
from dppo.report.plotting import fig_dynamics
from dppo.report.result_files import read_metrics, read_win_rates
from dppo.runtime.io import save_figure
from dppo.runtime.stage import stage

with stage(snakemake):
    runs = picked_files(read_win_rates(snakemake.input.win_rates), snakemake.input.metrics,
                        snakemake.params.baseline, snakemake.params.dppo)
    save_figure(fig_dynamics({title: read_metrics(path) for title, path in runs.items()}), *snakemake.output)
