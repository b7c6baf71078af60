"""Supervised fine-tuning on the prepared SFT split (logic in dppo.train.sft; several GPUs: torchrun)."""
from dppo.runtime.launch import run_job
from dppo.runtime.stage import stage
from dppo.runtime.warm import import_preloads
from dppo.train.sft import sft_job

import_preloads(sft_job.__module__)  # before stage(): the model stack's import is start-up

with stage(snakemake):
    run_job(sft_job, dict(
        opt=snakemake.params.opt, model_dir=snakemake.params.init, train_file=snakemake.input.train,
        out_dir=snakemake.output.model, metrics_file=snakemake.output.metrics, checkpoint_dir=snakemake.params.checkpoint_dir,
        trust_remote_code=snakemake.params.trust_remote_code, distributed=snakemake.params.distributed,
    ), n_gpus=snakemake.resources.gpu)
