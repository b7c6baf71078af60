"""Write the embedded default's synthetic datasets in the hub schemas (logic in dppo.data.synthetic)."""
from dppo.data.synthetic import write_datasets
from dppo.runtime.stage import stage
from dppo.settings import TaskSpec

with stage(snakemake):
    write_datasets(TaskSpec.from_dict(snakemake.params.task, "synthetic"), snakemake.output.smoltalk,
                   snakemake.output.ultrafeedback)
