"""y_gen = the SFT (reference) model's greedy answer to every preference-training prompt."""
from dppo.responses import pregenerate_ygen
from dppo.settings import GenerationSettings
from dppo.stage import stage

with stage(snakemake):
    pregenerate_ygen(snakemake.input.model, snakemake.input.train, snakemake.input.stats, snakemake.output.ygen,
                     GenerationSettings.from_dict(snakemake.params.generation, "generation"),
                     snakemake.params.trust_remote_code)
