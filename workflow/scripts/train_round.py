"""Train one round of an on-policy experiment (logic in dppo.train.preference.round_job; several GPUs: torchrun)."""
from dppo.runtime.launch import run_rule_job

inputs, outputs = snakemake.input, snakemake.output
run_rule_job(snakemake, "dppo.train.preference:round_job", dict(
    experiment=snakemake.params.experiment, round_k=snakemake.params.round_k, init_dir=inputs.init,
    state_dir=inputs.get("state"), train_file=inputs.train, ygen=inputs.ygen, ref=inputs.ref,
    out_dir=outputs.model, metrics_file=outputs.metrics, out_state=outputs.get("state"),
    earlier_metrics=list(inputs.get("earlier_metrics", [])), checkpoint_dir=snakemake.params.checkpoint_dir,
    subset_seed=snakemake.params.subset_seed, trust_remote_code=snakemake.params.trust_remote_code,
    distributed=snakemake.params.distributed,
), n_gpus=snakemake.resources.gpu)
