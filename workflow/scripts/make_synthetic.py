"""Write the embedded default's synthetic datasets in the hub schemas (logic in dppo.synthetic)."""
from dppo.stage import stage
from dppo.synthetic import TaskSpec, write_datasets

with stage(snakemake):
    write_datasets(TaskSpec(**snakemake.params.spec), snakemake.output.smoltalk, snakemake.output.ultrafeedback)
