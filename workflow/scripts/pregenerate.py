"""y_gen = the SFT (reference) model's greedy answer to every preference-training prompt."""
from dppo.infer.answers import pregenerate_ygen
from dppo.runtime.stage import stage
from dppo.runtime.warm import import_preloads
from dppo.settings import GenerationSettings

import_preloads(pregenerate_ygen.__module__)  # before stage(): the model stack's import is start-up

with stage(snakemake):
    pregenerate_ygen(snakemake.input.model, snakemake.input.train, snakemake.input.stats, snakemake.output.ygen,
                     GenerationSettings.from_dict(snakemake.params.generation, "generation"),
                     snakemake.params.trust_remote_code)
