"""Train one preference experiment (logic in dppo.preference)."""
import logging

from dppo.config import loss_config, optim_config
from dppo.preference import load_training_rows, subset_indices, train_preference
from dppo.stage import stage

with stage(snakemake):
    spec = snakemake.params.spec
    rows = load_training_rows(snakemake.input.train, snakemake.input.ygen, snakemake.input.ref)
    rows = rows.iloc[subset_indices(len(rows), spec.get("n_train"), snakemake.params.subset_seed)]
    logging.info("experiment %s: %d training rows, spec %s", spec["name"], len(rows), spec)
    train_preference(
        init_dir=snakemake.input.init, rows=rows, out_dir=snakemake.output.model,
        metrics_file=snakemake.output.metrics, loss_config=loss_config(spec), opt=optim_config(spec),
        checkpoint_dir=snakemake.params.checkpoint_dir, experiment=spec["name"],
        track_gen=spec.get("track_gen", True), on_nonfinite=spec.get("on_nonfinite", "stop"),
        trust_remote_code=snakemake.params.trust_remote_code,
    )
