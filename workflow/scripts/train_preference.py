"""Train one preference experiment (logic in dppo.train.preference; several GPUs: torchrun)."""
from dppo.runtime.launch import run_rule_job

run_rule_job(snakemake, "dppo.train.preference:experiment_job", dict(
    experiment=snakemake.params.experiment, init_dir=snakemake.input.init, train_file=snakemake.input.train,
    ygen_file=snakemake.input.ygen, ref_file=snakemake.input.ref, out_dir=snakemake.output.model,
    metrics_file=snakemake.output.metrics, checkpoint_dir=snakemake.params.checkpoint_dir,
    subset_seed=snakemake.params.subset_seed, trust_remote_code=snakemake.params.trust_remote_code,
    distributed=snakemake.params.distributed,
), n_gpus=snakemake.resources.gpu)
