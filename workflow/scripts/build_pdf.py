"""Build paper/main.pdf when TeX is installed; otherwise say how to install it."""
import shutil
import sys

from dppo.paper import build_pdf, stage_sources

# The repository's LaTeX sources and this run's generated figures/tables meet in one tree.
tex_dir = stage_sources(snakemake.params.src_dir, "paper", f"{snakemake.params.build_dir}/src")
# The transcript goes to the rule's log first, so it survives a failed LaTeX run.
built = build_pdf(tex_dir=tex_dir, pdf_out=snakemake.output.get("pdf", "paper/main.pdf"),
                  log_path=snakemake.log[0], build_dir=snakemake.params.build_dir)
shutil.copyfile(snakemake.log[0], snakemake.output.status)
if not built:
    with open(snakemake.log[0]) as fh:
        print(fh.read(), file=sys.stderr)  # shown in the snakemake output, not only in a file
