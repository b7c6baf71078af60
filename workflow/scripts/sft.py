"""Supervised fine-tuning on the prepared SFT split (logic in dppo.sft)."""
from dppo.config import optim_config
from dppo.sft import train_sft
from dppo.stage import stage

with stage(snakemake):
    train_sft(
        model_dir=snakemake.params.init, train_file=snakemake.input.train, out_dir=snakemake.output.model,
        metrics_file=snakemake.output.metrics, opt=optim_config(snakemake.params.opt),
        checkpoint_dir=snakemake.params.checkpoint_dir, trust_remote_code=snakemake.params.trust_remote_code,
    )
