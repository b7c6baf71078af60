"""Every model's greedy answers to the held-out evaluation prompts (logic in dppo.infer.answers)."""
from pathlib import Path

from dppo.runtime.launch import run_rule_job

p = snakemake.params
run_rule_job(snakemake, "dppo.infer.answers:generate_all_job", dict(
    models={Path(path).name: path for path in snakemake.input.models},
    out_files={Path(path).stem: path for path in snakemake.output.generations},
    test_file=snakemake.input.test, stats_file=snakemake.input.stats, generation=p.generation,
    max_prompts=p.max_prompts, cache_dir=p.cache_dir, trust_remote_code=p.trust_remote_code,
), n_gpus=snakemake.resources.gpu, one_process=True)
