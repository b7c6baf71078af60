"""Score every model's answers with one reward-model load (logic in dppo.infer.rewards)."""
from dppo.infer.scoring import score_files
from dppo.runtime.stage import stage
from dppo.settings import RewardSettings

with stage(snakemake):
    score_files(list(zip(snakemake.input.generations, snakemake.output.scores)),
                RewardSettings.from_dict(snakemake.params.reward, "reward"), snakemake.params.cache_dir)
