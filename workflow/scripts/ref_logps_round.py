"""The SFT model's log-probs of one round's regenerated y_gen (dppo.train.reference)."""
from dppo.runtime.launch import run_rule_job

inputs = snakemake.input
run_rule_job(snakemake, "dppo.train.reference:cache_round_reference_logps", dict(
    model_dir=inputs.model, pref_file=inputs.train, base_ygen_file=inputs.base_ygen, base_ref_file=inputs.base_ref,
    ygen_dir=inputs.ygen, out_dir=snakemake.output.ref, seeds=snakemake.params.seeds,
    batch_size=snakemake.params.batch_size, trust_remote_code=snakemake.params.trust_remote_code,
), n_gpus=snakemake.resources.gpu, one_process=True)
