"""y_gen of one round of an on-policy experiment, by the previous round's models (dppo.infer.answers)."""
from dppo.runtime.launch import run_rule_job

inputs = snakemake.input
run_rule_job(snakemake, "dppo.infer.answers:pregenerate_round_job", dict(
    model_root=inputs.model, pref_train_file=inputs.train, stats_file=inputs.stats, old_ygen=inputs.old_ygen,
    out_dir=snakemake.output.ygen, drift_file=snakemake.output.drift, generation=snakemake.params.generation,
    experiment=snakemake.wildcards.name, round_k=int(snakemake.wildcards.k), seeds=snakemake.params.seeds,
    refresh_max_new_tokens=snakemake.params.refresh_max_new_tokens,
    trust_remote_code=snakemake.params.trust_remote_code,
), n_gpus=snakemake.resources.gpu, one_process=True)
