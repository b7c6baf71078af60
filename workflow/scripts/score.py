"""Score one generations parquet into a scores parquet (logic in dppo.rewards)."""
from dppo.rewards import score_file
from dppo.settings import RewardSettings
from dppo.stage import stage

with stage(snakemake):
    score_file(snakemake.input.generations, snakemake.output.scores,
               RewardSettings.from_dict(snakemake.params.reward, "reward"))
