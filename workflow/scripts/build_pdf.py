"""Build paper/main.pdf when TeX is installed; otherwise say how to install it (dppo.report.pdf)."""
import sys
from pathlib import Path

from dppo.report.pdf import build_pdf, stage_sources
from dppo.runtime.stage import stage

with stage(snakemake):
    status = Path(snakemake.output.status)
    # The repository's LaTeX sources and this run's generated figures/tables meet in one tree.
    tex_dir = stage_sources(snakemake.params.src_dir, "paper", f"{snakemake.params.build_dir}/src")
    try:
        built = build_pdf(tex_dir=tex_dir, pdf_out=snakemake.output.get("pdf", "paper/main.pdf"), log_path=status,
                          build_dir=snakemake.params.build_dir)
    except RuntimeError:
        print(status.read_text())  # into the rule's log: Snakemake deletes a failed job's outputs
        raise
    if not built:  # shown in the snakemake output, not only in a file
        print(status.read_text(), file=sys.__stderr__)
