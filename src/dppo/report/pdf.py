"""The paper PDF: stage the LaTeX sources beside the generated figures and tables, and build
with latexmk (or pdflatex + bibtex); without TeX, say how to install it and never fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from dppo.runtime.io import atomic_output_file

TEX_INSTALL_HINT = (
    "No TeX engine found (latexmk or pdflatex), so paper/main.pdf was not built.\n"
    "Everything else (figures, tables, paper/tables/macros.tex) is up to date.\n"
    "To build the PDF on Debian/Ubuntu (about 90 MB download, 320 MB on disk):\n"
    "    sudo apt-get install --no-install-recommends latexmk texlive-latex-extra "
    "texlive-latex-recommended\n"
    "elsewhere install any TeX Live providing latexmk or pdflatex (MacTeX, TinyTeX), then\n"
    "rerun snakemake: the PDF rule reruns because paper/main.pdf is missing.\n"
)


def find_tex() -> str | None:
    """'latexmk' or 'pdflatex' when on PATH (latexmk preferred: it reruns as needed)."""
    for engine in ("latexmk", "pdflatex"):
        if shutil.which(engine):
            return engine
    return None


def tex_commands(engine: str, main: str, build_dir: str) -> list[list[str]]:
    """The commands that turn ``main`` (a .tex in the cwd) into ``build_dir/<stem>.pdf``."""
    stem = Path(main).stem
    if engine == "latexmk":
        return [["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error",
                 "-file-line-error", f"-outdir={build_dir}", main]]
    pdflatex = ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-file-line-error",
                f"-output-directory={build_dir}", main]
    cmds = [pdflatex]
    if shutil.which("bibtex"):
        # bibtex looks for the .bib relative to the cwd, the .aux lives in build_dir.
        cmds.append(["bibtex", str(Path(build_dir) / stem)])
    return cmds + [pdflatex, pdflatex]


def stage_sources(src_dir: str | Path, generated_dir: str | Path, out_dir: str | Path) -> Path:
    """A fresh tree with the LaTeX sources of ``src_dir`` (``*.tex``, ``*.bib``, ``sections/``)
    and the generated ``figures/`` and ``tables/`` of ``generated_dir``."""
    src_dir, generated_dir, out_dir = Path(src_dir), Path(generated_dir), Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for pattern in ("*.tex", "*.bib"):
        for path in src_dir.glob(pattern):
            shutil.copy(path, out_dir / path.name)
    for sub, root in (("sections", src_dir), ("figures", generated_dir), ("tables", generated_dir)):
        if (root / sub).is_dir():
            shutil.copytree(root / sub, out_dir / sub)
    return out_dir


def build_pdf(tex_dir: str | Path, pdf_out: str | Path, log_path: str | Path,
              build_dir: str | Path, main: str = "main.tex", engine: str | None = "auto") -> bool:
    """Compile the paper; return True when ``pdf_out`` was written.

    Without a TeX engine it writes :data:`TEX_INSTALL_HINT` to ``log_path`` and returns
    False (never raises: the pipeline must not fail for want of TeX). With one, a LaTeX
    error raises ``RuntimeError`` naming the log, since that is a real bug in the paper.
    The PDF is copied to ``pdf_out`` atomically.
    """
    tex_dir, pdf_out, log_path = Path(tex_dir), Path(pdf_out), Path(log_path)
    build_dir = Path(build_dir).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if engine == "auto":
        engine = find_tex()
    if engine is None:
        log_path.write_text(TEX_INSTALL_HINT)
        return False
    build_dir.mkdir(parents=True, exist_ok=True)
    transcript = [f"engine: {engine}\n"]
    for cmd in tex_commands(engine, main, str(build_dir)):
        env = dict(os.environ, BIBINPUTS=f"{tex_dir.resolve()}:")
        proc = subprocess.run(cmd, cwd=tex_dir, capture_output=True, text=True, env=env)
        transcript.append(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}\n")
        if proc.returncode != 0:
            log_path.write_text("".join(transcript))
            raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}); see {log_path} "
                               f"and {build_dir / Path(main).with_suffix('.log').name}")
    built = build_dir / Path(main).with_suffix(".pdf").name
    with atomic_output_file(pdf_out) as tmp:
        shutil.copyfile(built, tmp)
    transcript.append(f"wrote {pdf_out}\n")
    log_path.write_text("".join(transcript))
    return True
