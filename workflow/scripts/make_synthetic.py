"""Write the embedded default's synthetic datasets in the hub schemas (logic in dppo.synthetic)."""
from dppo.settings import TaskSpec
from dppo.stage import stage
from dppo.synthetic import write_datasets

with stage(snakemake):
    write_datasets(TaskSpec.from_dict(snakemake.params.task, "synthetic"), snakemake.output.smoltalk,
                   snakemake.output.ultrafeedback)
