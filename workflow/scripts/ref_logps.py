"""Reference log-probs of y_w, y_l and y_gen for every training row, computed once (dppo.train.reference)."""
from dppo.runtime.stage import stage
from dppo.runtime.warm import import_preloads
from dppo.train.reference import cache_reference_logps

import_preloads(cache_reference_logps.__module__)  # before stage(): the model stack's import is start-up

with stage(snakemake):
    cache_reference_logps(snakemake.input.model, snakemake.input.train, snakemake.input.ygen, snakemake.output.ref,
                          batch_size=snakemake.params.batch_size, trust_remote_code=snakemake.params.trust_remote_code)
