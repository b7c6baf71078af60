"""Build paper/main.pdf when TeX is installed; otherwise say how to install it."""
import shutil
import sys

from dppo.paper import build_pdf

# The transcript goes to the rule's log first, so it survives a failed LaTeX run.
built = build_pdf(tex_dir="paper", pdf_out=snakemake.output.get("pdf", "paper/main.pdf"),
                  log_path=snakemake.log[0], build_dir=snakemake.params.build_dir)
shutil.copyfile(snakemake.log[0], snakemake.output.status)
if not built:
    with open(snakemake.log[0]) as fh:
        print(fh.read(), file=sys.stderr)  # shown in the snakemake output, not only in a file
