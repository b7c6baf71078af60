"""Build the embedded default's tiny model and tokenizer (logic in dppo.data.tiny_model)."""
from dppo.data import synthetic
from dppo.runtime.launch import run_rule_job

run_rule_job(snakemake, "dppo.data.tiny_model:init_model_job", dict(
    out_dir=snakemake.output.model, words=synthetic.vocabulary(), spec=snakemake.params.spec,
))
