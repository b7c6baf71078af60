"""Score every model's answers with one reward-model load (logic in dppo.rewards)."""
from dppo.rewards import score_files
from dppo.settings import RewardSettings
from dppo.stage import stage

with stage(snakemake):
    score_files(list(zip(snakemake.input.generations, snakemake.output.scores)),
                RewardSettings.from_dict(snakemake.params.reward, "reward"), snakemake.params.cache_dir)
