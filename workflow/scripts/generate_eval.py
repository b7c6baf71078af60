"""One model's greedy answers to the held-out evaluation prompts."""
from dppo.responses import generate_answers
from dppo.stage import stage

with stage(snakemake):
    generate_answers(snakemake.input.model, snakemake.input.test, snakemake.input.stats,
                     snakemake.output.generations, snakemake.params.generation, snakemake.params.max_prompts)
