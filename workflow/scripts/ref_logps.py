"""Reference log-probs of y_w, y_l and y_gen for every training row, computed once (dppo.train.reference)."""
from dppo.runtime.launch import run_rule_job

run_rule_job(snakemake, "dppo.train.reference:cache_reference_logps", dict(
    model_dir=snakemake.input.model, pref_file=snakemake.input.train, ygen_file=snakemake.input.ygen,
    out_file=snakemake.output.ref, batch_size=snakemake.params.batch_size,
    trust_remote_code=snakemake.params.trust_remote_code,
), n_gpus=snakemake.resources.gpu, one_process=True)
