"""Every model's greedy answers to the held-out evaluation prompts (logic in dppo.infer.answers)."""
from pathlib import Path

from dppo.infer.answers import generate_all
from dppo.runtime.stage import stage
from dppo.runtime.warm import import_preloads
from dppo.settings import GenerationSettings

import_preloads(generate_all.__module__)  # before stage(): the model stack's import is start-up

with stage(snakemake):
    p = snakemake.params
    models = {Path(path).name: path for path in snakemake.input.models}
    outputs = {Path(path).stem: path for path in snakemake.output.generations}
    generate_all(models, outputs, snakemake.input.test, snakemake.input.stats,
                 GenerationSettings.from_dict(p.generation, "generation"), p.max_prompts, p.cache_dir,
                 p.trust_remote_code)
