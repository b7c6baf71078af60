"""y_gen = the SFT (reference) model's greedy answer to every preference-training prompt (dppo.infer.answers)."""
from dppo.runtime.launch import run_rule_job

run_rule_job(snakemake, "dppo.infer.answers:pregenerate_job", dict(
    model_dir=snakemake.input.model, pref_train_file=snakemake.input.train, stats_file=snakemake.input.stats,
    out_file=snakemake.output.ygen, generation=snakemake.params.generation,
    trust_remote_code=snakemake.params.trust_remote_code,
), n_gpus=snakemake.resources.gpu, one_process=True)
