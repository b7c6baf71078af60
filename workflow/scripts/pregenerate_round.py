"""y_gen of one round of an on-policy experiment, by the previous round's models (dppo.infer.answers)."""
from dppo.infer.answers import pregenerate_round
from dppo.runtime.stage import stage
from dppo.runtime.warm import import_preloads
from dppo.settings import GenerationSettings

import_preloads(pregenerate_round.__module__)  # before stage(): the model stack's import is start-up

with stage(snakemake):
    pregenerate_round(snakemake.input.model, snakemake.input.train, snakemake.input.stats, snakemake.input.old_ygen,
                      snakemake.output.ygen, snakemake.output.drift,
                      GenerationSettings.from_dict(snakemake.params.generation, "generation"),
                      experiment=snakemake.wildcards.name, round_k=int(snakemake.wildcards.k),
                      seeds=snakemake.params.seeds, refresh_max_new_tokens=snakemake.params.refresh_max_new_tokens,
                      trust_remote_code=snakemake.params.trust_remote_code)
