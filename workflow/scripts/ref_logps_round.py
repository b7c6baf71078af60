"""The SFT model's log-probs of one round's regenerated y_gen (dppo.train.reference)."""
from dppo.runtime.stage import stage
from dppo.runtime.warm import import_preloads
from dppo.train.reference import cache_round_reference_logps

import_preloads(cache_round_reference_logps.__module__)  # before stage(): the model stack's import is start-up

with stage(snakemake):
    cache_round_reference_logps(snakemake.input.model, snakemake.input.train, snakemake.input.base_ygen,
                                snakemake.input.base_ref, snakemake.input.ygen, snakemake.output.ref,
                                seeds=snakemake.params.seeds, batch_size=snakemake.params.batch_size,
                                trust_remote_code=snakemake.params.trust_remote_code)
