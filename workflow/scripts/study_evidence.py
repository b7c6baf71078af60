"""The paper's evidence section: a study's committed tables as macros, a table and the
dose-response figure (dppo.report.evidence)."""
from dppo.report.evidence import write_evidence
from dppo.runtime.stage import stage

with stage(snakemake):
    write_evidence(snakemake.params.directories, snakemake.params.main, dict(snakemake.output), snakemake.params.source)
