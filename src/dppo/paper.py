"""The paper's generated numbers (LaTeX macros) and the PDF build.

Every number in ``paper/main.tex`` is a macro from ``paper/tables/macros.tex``, written
here from the win-rate table and the data statistics, so no number is typed by hand.
The verdict on each of the poster's claims is computed here too, from the same table.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

PENALTY_LOSSES = ("minll", "unll", "conll")
NA = "n/a"
# The poster's own numbers, quoted by the paper next to ours (kept here, not in the .tex).
POSTER_NUMBERS = {
    "posterSftCutoff": "576",
    "posterPrefCutoff": "989",
    "posterEffUnllRows": "8k",
    "posterEffDpoRows": "60k",
    "posterWinRateChained": "0.977",
}

TEX_INSTALL_HINT = (
    "No TeX engine found (latexmk or pdflatex), so paper/main.pdf was not built.\n"
    "Everything else (figures, tables, paper/tables/macros.tex) is up to date.\n"
    "To build the PDF on Debian/Ubuntu (about 90 MB download, 320 MB on disk):\n"
    "    sudo apt-get install --no-install-recommends latexmk texlive-latex-extra "
    "texlive-latex-recommended\n"
    "elsewhere install any TeX Live providing latexmk or pdflatex (MacTeX, TinyTeX), then\n"
    "rerun snakemake: the PDF rule reruns because paper/main.pdf is missing.\n"
)

_DIGIT_WORDS = ("Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine")
_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    # Labels such as "unll 60k → DPO" or "α=0.1" must compile under pdflatex.
    "→": r"$\rightarrow$", "α": r"$\alpha$", "β": r"$\beta$", "ζ": r"$\zeta$",
    "≤": r"$\leq$", "≥": r"$\geq$", "×": r"$\times$",
}
_MACRO_NAME = re.compile(r"^[A-Za-z]+$")


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and a few Unicode symbols labels use)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def macro_name(*parts: str) -> str:
    """A valid LaTeX control-word name (letters only) in camelCase from free text.

    Digits are spelled out ("a0.1" -> "AZeroPointOne") since TeX command names cannot
    contain them; everything else that is not a letter separates words.
    """
    words: list[str] = []
    for part in parts:
        text = str(part).replace(".", " Point ")
        text = re.sub(r"\d", lambda m: f" {_DIGIT_WORDS[int(m.group())]} ", text)
        words.extend(w for w in re.split(r"[^A-Za-z]+", text) if w)
    if not words:
        raise ValueError(f"no letters to build a macro name from {parts!r}")
    head, *tail = words
    return head[0].lower() + head[1:] + "".join(w[0].upper() + w[1:] for w in tail)


def fmt_float(value, digits: int = 3) -> str:
    """Fixed-point number, or 'n/a' when missing (the paper still compiles)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{float(value):.{digits}f}"


def fmt_percent(value, digits: int = 1) -> str:
    r"""Share as a LaTeX percentage ('12.5\%'), or 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return f"{100 * float(value):.{digits}f}\\%"


def render_macros(macros: Mapping[str, str], header: str | None = None) -> str:
    r"""One ``\newcommand`` line per macro; values go in verbatim (escape text first).

    Names must be letters only: TeX control words cannot contain digits or punctuation.
    """
    lines = [f"% {header}" if header else "% Generated file: do not edit."]
    for name, value in macros.items():
        if not _MACRO_NAME.match(name):
            raise ValueError(f"invalid LaTeX macro name {name!r}: letters only")
        value = str(value)
        if value.count("{") != value.count("}"):
            raise ValueError(f"unbalanced braces in the value of \\{name}: {value!r}")
        lines.append(f"\\newcommand{{\\{name}}}{{{value}}}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- macros content


SEED_KEYS = ("label", "group", "loss", "f", "alpha", "n_train")


def aggregate_seeds(win_rates: pd.DataFrame, keys=SEED_KEYS) -> pd.DataFrame:
    """Mean over seeds of the win rate, its bootstrap interval bounds and the negative share.

    With one seed this is the run's own 95% bootstrap interval over prompts; with several,
    the seed-averaged interval (the table keeps per-seed rows for anything finer).
    """
    keys = [k for k in keys if k in win_rates.columns]
    values = [c for c in ("win_rate", "ci_low", "ci_high", "frac_negative") if c in win_rates]
    if win_rates.empty:
        return pd.DataFrame(columns=[*keys, *values, "n_seeds"])
    grouped = win_rates.groupby(keys, dropna=False, sort=False)
    agg = grouped[values].mean()
    agg["n_seeds"] = grouped.size()
    return agg.reset_index()


def label_with_alpha(row) -> str:
    """Label plus alpha for penalty losses, since one label (loss, f) may run at several alphas."""
    if row.get("loss") in PENALTY_LOSSES and pd.notna(row.get("alpha")):
        return f"{row['label']}, α={row['alpha']:g}"
    return str(row["label"])


def best_penalty(win_rates: pd.DataFrame):
    """Seed-averaged row of the penalty variant (groups main, alpha_sweep) with the highest
    win rate, or None. Ties keep the first in table order."""
    penal = win_rates[win_rates["group"].isin(["main", "alpha_sweep"])
                      & win_rates["loss"].isin(PENALTY_LOSSES)]
    if penal.empty:
        return None
    agg = aggregate_seeds(penal, ("label", "loss", "f", "alpha", "n_train"))
    return agg.loc[agg["win_rate"].idxmax()]


def _matching(df: pd.DataFrame, row, keys) -> pd.DataFrame:
    for key in keys:
        df = df[(df[key] == row[key]) | (df[key].isna() & pd.isna(row[key]))]
    return df


def pick_runs(win_rates: pd.DataFrame) -> dict[str, dict]:
    """The runs the reward histogram and the dynamics compare.

    ``dpo``: the main-group DPO run with the most training rows; ``dppo``: the best penalty
    variant (:func:`best_penalty`). Each value is ``{"name", "label", "win_rate"}`` of its
    lowest seed; a key is absent when the grid has no such run.
    """
    picked: dict[str, dict] = {}
    if win_rates.empty:
        return picked
    main_dpo = win_rates[(win_rates["group"] == "main") & (win_rates["loss"] == "dpo")]
    if not main_dpo.empty:
        row = main_dpo.sort_values(["n_train", "seed"], ascending=[False, True],
                                   na_position="first").iloc[0]  # NaN n_train = all rows
        picked["dpo"] = {"name": row["name"], "label": row["label"],
                         "win_rate": float(row["win_rate"])}
    best = best_penalty(win_rates)
    if best is not None:
        same = _matching(win_rates[win_rates["group"].isin(["main", "alpha_sweep"])], best,
                         ("label", "loss", "f", "alpha", "n_train"))
        row = same.sort_values("seed").iloc[0]
        picked["dppo"] = {"name": row["name"], "label": label_with_alpha(row),
                          "win_rate": float(best["win_rate"])}
    return picked


def data_efficiency_rows(win_rates: pd.DataFrame, n_full: int | None = None) -> pd.DataFrame:
    """Win rate per method and training-set size, seed-averaged.

    The data-efficiency group holds the runs on subsets; a method's run on all rows is the
    main-group run of the same loss (and f, alpha for penalties), whose ``n_train`` is
    empty and reads as ``n_full`` (the preference rows kept). Columns: ``method`` (loss,
    and f for penalties), ``label``, ``loss``, ``n_train``, ``win_rate``, ``ci_low``, ``ci_high``.
    """
    cols = ["method", "label", "loss", "n_train", "win_rate", "ci_low", "ci_high"]
    eff = win_rates[win_rates["group"] == "data_efficiency"]
    if eff.empty:
        return pd.DataFrame(columns=cols)
    main = win_rates[win_rates["group"] == "main"]
    parts = [eff.assign(method=eff.apply(_method_key, axis=1))]
    for _, run in eff.drop_duplicates(["loss", "f", "alpha"]).iterrows():
        keys = ("loss", "f", "alpha") if run["loss"] in PENALTY_LOSSES else ("loss",)
        full = _matching(main, run, keys)
        if len(full):
            parts.append(full.assign(method=_method_key(run)))
    rows = pd.concat(parts, ignore_index=True)
    rows["n_train"] = pd.to_numeric(rows["n_train"], errors="coerce").fillna(
        float("nan") if n_full is None else n_full)
    rows = rows.dropna(subset=["n_train"])
    # The full-data run's label ("DPO") names the method better than a subset's.
    names = {m: grp.sort_values("group", key=lambda g: g != "main")["label"].iloc[0]
             for m, grp in rows.groupby("method", sort=False)}
    agg = aggregate_seeds(rows, ("method", "loss", "n_train"))
    agg["label"] = agg["method"].map(names)
    return agg[cols].sort_values(["method", "n_train"], kind="stable").reset_index(drop=True)


def _method_key(row) -> str:
    return f"{row['loss']} ({row['f']})" if row["loss"] in PENALTY_LOSSES else str(row["loss"])


def claim_verdicts(win_rates: pd.DataFrame, n_full: int | None = None) -> dict[str, dict]:
    """Test the poster's discussion claims on this run's win-rate table.

    ``n_full``: the number of preference rows a run without ``n_train`` trains on.

    Returns one entry per claim (``alpha``, ``negative``, ``efficiency``, ``chained``) with
    ``verdict`` in {"holds", "does not hold", "cannot be tested"} and the numbers used.
    The criteria are stated with each entry so the paper can print them.
    """
    out: dict[str, dict] = {}
    wr = win_rates

    # 1. The choice of alpha matters: across the alpha sweep of the best (loss, f), the
    #    best and worst alpha have non-overlapping 95% intervals.
    sweep = aggregate_seeds(wr[wr["group"].isin(["alpha_sweep", "main"]) & wr["loss"].isin(PENALTY_LOSSES)],
                       ("loss", "f", "alpha"))
    counts = sweep.groupby(["loss", "f"], dropna=False)["alpha"].transform("nunique") if len(sweep) else []
    sweep = sweep[pd.Series(counts, index=sweep.index) >= 2] if len(sweep) else sweep
    if sweep.empty:
        out["alpha"] = {"verdict": "cannot be tested", "spread": math.nan, "loss": NA, "f": NA}
    else:
        best = sweep.loc[sweep["win_rate"].idxmax()]
        line = sweep[(sweep["loss"] == best["loss"]) & (sweep["f"] == best["f"])]
        worst = line.loc[line["win_rate"].idxmin()]
        holds = best["ci_low"] > worst["ci_high"]
        out["alpha"] = {"verdict": "holds" if holds else "does not hold",
                        "spread": best["win_rate"] - worst["win_rate"],
                        "best_alpha": best["alpha"], "worst_alpha": worst["alpha"],
                        "loss": best["loss"], "f": best["f"]}

    # 2. Negative rewards drop compared to DPO: the best penalty variant has a smaller
    #    share of negative rewards than main DPO.
    dpo = aggregate_seeds(wr[(wr["group"] == "main") & (wr["loss"] == "dpo")], ("loss",))
    best = best_penalty(wr)
    if dpo.empty or best is None:
        out["negative"] = {"verdict": "cannot be tested", "dpo": math.nan, "best": math.nan}
    else:
        d, b = dpo["frac_negative"].iloc[0], best["frac_negative"]
        out["negative"] = {"verdict": "holds" if b < d else "does not hold", "dpo": d, "best": b,
                           "label": label_with_alpha(best)}

    # 3. Unlikelihood on the fewest rows beats DPO on the most rows (poster: 8k vs 60k).
    eff = data_efficiency_rows(wr, n_full)
    unll, dpo_eff = eff[eff["loss"] == "unll"], eff[eff["loss"] == "dpo"]
    if unll.empty or dpo_eff.empty:
        out["efficiency"] = {"verdict": "cannot be tested", "unll": math.nan, "dpo": math.nan,
                             "unll_n": NA, "dpo_n": NA}
    else:
        u = unll.loc[unll["n_train"].idxmin()]
        d = dpo_eff.loc[dpo_eff["n_train"].idxmax()]
        out["efficiency"] = {"verdict": "holds" if u["win_rate"] > d["win_rate"] else "does not hold",
                             "unll": u["win_rate"], "dpo": d["win_rate"],
                             "unll_n": int(u["n_train"]), "dpo_n": int(d["n_train"])}

    # 4. The chained run (unlikelihood, then DPO) has the highest win rate of all runs.
    everything = aggregate_seeds(wr, ("label", "group", "loss", "f", "alpha", "n_train"))
    chained = everything[everything["group"] == "chained"]
    if chained.empty:
        out["chained"] = {"verdict": "cannot be tested", "chained": math.nan, "best_other": math.nan}
    else:
        c = chained["win_rate"].max()
        others = everything[everything["group"] != "chained"]["win_rate"]
        best_other = others.max() if len(others) else math.nan
        holds = len(others) == 0 or c > best_other
        out["chained"] = {"verdict": "holds" if holds else "does not hold", "chained": c,
                          "best_other": best_other,
                          "label": str(chained.loc[chained["win_rate"].idxmax(), "label"])}
    return out


def train_count(stats: Mapping, key: str) -> int:
    """A count of ``stats.json`` for the TRAIN split (the file keeps one per split)."""
    value = stats.get(key, 0)
    if key == "dropped":
        value = value.get("train", value) if isinstance(value, Mapping) else value
        return int(sum(value.values())) if isinstance(value, Mapping) else int(value)
    return int(value.get("train", 0)) if isinstance(value, Mapping) else int(value)


def paper_macros(win_rates: pd.DataFrame, data_stats: Mapping[str, Mapping],
                 setup: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every number and run-dependent word the paper's text uses, as macro name -> value.

    ``data_stats`` maps a dataset key ("sft", "pref") to its ``stats.json`` content;
    ``setup`` maps macro names (e.g. ``setupModel``) to free text from the config, escaped.
    Missing groups give 'n/a' values, never missing macros, so the paper always compiles.
    """
    m: dict[str, str] = {}
    for key, stats in data_stats.items():
        pre = macro_name(key)
        m[f"{pre}Cutoff"] = str(int(stats["cutoff"]))
        m[f"{pre}Percentile"] = f"{float(stats.get('percentile', 95)):g}"
        for field in ("rows_in", "rows_kept", "rows_truncated", "dropped"):
            name = "Rows" + ("Dropped" if field == "dropped" else field.split("_")[1].capitalize())
            m[f"{pre}{name}"] = str(train_count(stats, field))
        for pct, value in stats.get("percentiles", {}).items():
            # "95" -> \sftPNineFive (digits are spelled out in macro names)
            m[macro_name(key, "P", str(pct).split(".")[0])] = str(int(round(value)))

    wr = win_rates
    m["nExperiments"] = str(len(wr))
    m["nSeeds"] = str(int(wr["seed"].nunique())) if len(wr) else "0"
    m["nEvalPrompts"] = str(int(wr["n_prompts"].max())) if "n_prompts" in wr and len(wr) else NA

    dpo = aggregate_seeds(wr[(wr["group"] == "main") & (wr["loss"] == "dpo")], ("loss",))
    beta, n_train = _first(wr, "main", "dpo", "beta"), _first(wr, "main", "dpo", "n_train")
    m["betaMain"] = NA if beta is None else f"{float(beta):g}"
    n_full = train_count(data_stats["pref"], "rows_kept") if "pref" in data_stats else None
    n_train = n_full if n_train is None else n_train
    m["nTrainMain"] = NA if n_train is None else str(int(n_train))
    m["winRateDPO"] = fmt_float(dpo["win_rate"].iloc[0] if len(dpo) else None)
    m["winRateDPOLow"] = fmt_float(dpo["ci_low"].iloc[0] if len(dpo) else None)
    m["winRateDPOHigh"] = fmt_float(dpo["ci_high"].iloc[0] if len(dpo) else None)
    sft_neg = wr["frac_negative_reference"].iloc[0] if "frac_negative_reference" in wr and len(wr) else None
    m["fracNegSFT"] = fmt_percent(sft_neg)
    m["fracNegDPO"] = fmt_percent(dpo["frac_negative"].iloc[0] if len(dpo) else None)

    best = best_penalty(wr)
    m["bestLabel"] = latex_escape(label_with_alpha(best)) if best is not None else NA
    m["winRateBest"] = fmt_float(best["win_rate"] if best is not None else None)
    m["winRateBestLow"] = fmt_float(best["ci_low"] if best is not None else None)
    m["winRateBestHigh"] = fmt_float(best["ci_high"] if best is not None else None)
    m["fracNegBest"] = fmt_percent(best["frac_negative"] if best is not None else None)

    # Per method of the main group (seed mean), e.g. \winRateMainUnllSqrt.
    main = aggregate_seeds(wr[wr["group"] == "main"], ("label",))
    for _, row in main.iterrows():
        # setdefault: two labels differing only in punctuation keep the first's value.
        m.setdefault(macro_name("winRateMain", row["label"]), fmt_float(row["win_rate"]))

    verdicts = claim_verdicts(wr, n_full)
    a, n, e, c = (verdicts[k] for k in ("alpha", "negative", "efficiency", "chained"))
    m["claimAlphaVerdict"] = a["verdict"]
    m["alphaSpread"] = fmt_float(a["spread"])
    m["alphaSweepLoss"] = latex_escape(f"{a['loss']} ({a['f']})") if a["loss"] != NA else NA
    m["alphaBest"] = f"{a['best_alpha']:g}" if "best_alpha" in a else NA
    m["alphaWorst"] = f"{a['worst_alpha']:g}" if "worst_alpha" in a else NA
    m["claimNegVerdict"] = n["verdict"]
    m["claimEffVerdict"] = e["verdict"]
    m["effUnllN"] = str(e["unll_n"])
    m["effDpoN"] = str(e["dpo_n"])
    m["effUnllWinRate"] = fmt_float(e["unll"])
    m["effDpoWinRate"] = fmt_float(e["dpo"])
    m["claimChainedVerdict"] = c["verdict"]
    m["winRateChained"] = fmt_float(c["chained"])
    m["winRateBestOther"] = fmt_float(c["best_other"])
    m["chainedLabel"] = latex_escape(c["label"]) if "label" in c else NA
    m.update(POSTER_NUMBERS)
    for name, text in (setup or {}).items():
        m[name] = latex_escape(text)
    return m


def _first(wr: pd.DataFrame, group: str, loss: str, column: str):
    """``column`` of the first row of (group, loss), or None when absent/missing."""
    rows = wr[(wr["group"] == group) & (wr["loss"] == loss)]
    if rows.empty or column not in rows or pd.isna(rows[column].iloc[0]):
        return None
    return rows[column].iloc[0]


# ------------------------------------------------------------------------- PDF build


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
    pdf_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pdf_out.with_name(f".{pdf_out.name}.tmp")
    shutil.copyfile(built, tmp)
    tmp.replace(pdf_out)
    transcript.append(f"wrote {pdf_out}\n")
    log_path.write_text("".join(transcript))
    return True
