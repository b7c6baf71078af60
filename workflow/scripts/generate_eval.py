"""One model's greedy answers to the held-out evaluation prompts (logic in dppo.responses)."""
from dppo.responses import generate_answers
from dppo.settings import GenerationSettings
from dppo.stage import stage

with stage(snakemake):
    p = snakemake.params
    generate_answers(snakemake.input.model, snakemake.input.test, snakemake.input.stats, snakemake.output.generations,
                     GenerationSettings.from_dict(p.generation, "generation"), p.max_prompts, p.trust_remote_code)
