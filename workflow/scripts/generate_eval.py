"""Every model's greedy answers to the held-out evaluation prompts (logic in dppo.responses)."""
from pathlib import Path

from dppo.responses import generate_all
from dppo.settings import GenerationSettings
from dppo.stage import stage

with stage(snakemake):
    p = snakemake.params
    models = {Path(path).name: path for path in snakemake.input.models}
    outputs = {Path(path).stem: path for path in snakemake.output.generations}
    generate_all(models, outputs, snakemake.input.test, snakemake.input.stats,
                 GenerationSettings.from_dict(p.generation, "generation"), p.max_prompts, p.cache_dir,
                 p.trust_remote_code)
