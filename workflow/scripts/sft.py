"""Supervised fine-tuning on the prepared SFT split (logic in dppo.train.sft; several GPUs: torchrun)."""
from dppo.runtime.launch import run_rule_job

run_rule_job(snakemake, "dppo.train.sft:sft_job", dict(
    opt=snakemake.params.opt, model_dir=snakemake.params.init, train_file=snakemake.input.train,
    out_dir=snakemake.output.model, metrics_file=snakemake.output.metrics, checkpoint_dir=snakemake.params.checkpoint_dir,
    trust_remote_code=snakemake.params.trust_remote_code, distributed=snakemake.params.distributed,
), n_gpus=snakemake.resources.gpu)
