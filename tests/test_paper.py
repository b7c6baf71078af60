"""Generated LaTeX macros, the poster-claim verdicts, and the PDF builder's no-TeX path."""

import re
import shutil
import subprocess

import pandas as pd
import pytest

from dppo import paper


def _row(name, group, loss, f, alpha, n_train, seed, win, lo, hi, neg, label):
    return {"name": name, "label": label, "group": group, "loss": loss, "f": f, "alpha": alpha,
            "beta": 0.1, "n_train": n_train, "seed": seed, "win_rate": win, "ci_low": lo,
            "ci_high": hi, "frac_negative": neg, "n_prompts": 64, "frac_negative_reference": 0.5}


@pytest.fixture
def table():
    return pd.DataFrame([
        _row("dpo-s0", "main", "dpo", None, None, 200, 0, 0.60, 0.50, 0.70, 0.40, "DPO"),
        _row("dpo-s1", "main", "dpo", None, None, 200, 1, 0.70, 0.60, 0.80, 0.20, "DPO"),
        _row("unll-sqrt-a0.1-s0", "main", "unll", "sqrt", 0.1, 200, 0, 0.75, 0.65, 0.85, 0.10,
             "unll (sqrt)"),
        _row("unll-sqrt-a1-s0", "alpha_sweep", "unll", "sqrt", 1.0, 200, 0, 0.50, 0.40, 0.60, 0.50,
             "unll (sqrt)"),
        _row("minll-linear-a0.1-s0", "alpha_sweep", "minll", "linear", 0.1, 200, 0, 0.55, 0.45,
             0.65, 0.30, "minll (linear)"),
        _row("dpo-n50-s0", "data_efficiency", "dpo", None, None, 50, 0, 0.52, 0.4, 0.6, 0.4, "DPO"),
        _row("dpo-n200-s0", "data_efficiency", "dpo", None, None, 200, 0, 0.66, 0.6, 0.7, 0.3, "DPO"),
        _row("unll-n50-s0", "data_efficiency", "unll", "sqrt", 0.1, 50, 0, 0.68, 0.6, 0.8, 0.2,
             "unll (sqrt)"),
        _row("chain-s0", "chained", "dpo", None, None, 50, 0, 0.72, 0.6, 0.8, 0.2, "unll → DPO"),
    ])


STATS = {"sft": {"percentile": 95.0, "cutoff": 576, "percentiles": {"50": 210.4, "95": 576.0},
                 "rows_in": 1000, "rows_kept": 990, "rows_truncated": 49,
                 "dropped": {"multi_turn": 7, "empty": 3}},
         "pref": {"percentile": 95.0, "cutoff": 989, "percentiles": {"95": 989.0},
                  "rows_in": 500, "rows_kept": 500, "rows_truncated": 25, "dropped": {}}}


def test_macro_name_letters_only_and_camel_case():
    assert paper.macro_name("winRateMain", "unll (sqrt)") == "winRateMainUnllSqrt"
    assert paper.macro_name("a0.1") == "aZeroPointOne"
    assert paper.macro_name("sft", "P", "95") == "sftPNineFive"
    assert paper.macro_name("unll → DPO 60k") == "unllDPOSixZeroK"
    with pytest.raises(ValueError):
        paper.macro_name("→ ()")


def test_latex_escape_specials_and_unicode():
    assert paper.latex_escape("a_b & 50% #1 {x} ~^") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}")
    assert paper.latex_escape("unll → DPO, α=0.1") == r"unll $\rightarrow$ DPO, $\alpha$=0.1"


def test_render_macros_validates_names_and_braces():
    text = paper.render_macros({"winRateDPO": "0.620", "sftCutoff": "576"}, header="test")
    assert text.splitlines() == ["% test", r"\newcommand{\winRateDPO}{0.620}",
                                 r"\newcommand{\sftCutoff}{576}"]
    with pytest.raises(ValueError, match="letters only"):
        paper.render_macros({"winRate2": "1"})
    with pytest.raises(ValueError, match="unbalanced"):
        paper.render_macros({"bad": "{"})


def test_paper_macros_values(table):
    m = paper.paper_macros(table, STATS, setup={"setupModel": "tiny_llama (2 layers)"})
    # data statistics
    assert m["sftCutoff"] == "576" and m["prefCutoff"] == "989"
    assert m["sftPercentile"] == "95"
    assert m["sftRowsDropped"] == "10" and m["prefRowsDropped"] == "0"
    assert m["sftPFiveZero"] == "210" and m["sftPNineFive"] == "576"
    # DPO of the main group: mean of the two seeds
    assert m["winRateDPO"] == "0.650"
    assert m["winRateDPOLow"] == "0.550" and m["winRateDPOHigh"] == "0.750"
    assert m["fracNegDPO"] == r"30.0\%" and m["fracNegSFT"] == r"50.0\%"
    assert m["betaMain"] == "0.1" and m["nTrainMain"] == "200"
    # best penalty variant over main + alpha_sweep: unll (sqrt) at alpha 0.1
    assert m["winRateBest"] == "0.750"
    assert m["bestLabel"] == r"unll (sqrt), $\alpha$=0.1"
    assert m["winRateMainUnllSqrt"] == "0.750" and m["winRateMainDPO"] == "0.650"
    assert m["nExperiments"] == "9" and m["nSeeds"] == "2" and m["nEvalPrompts"] == "64"
    assert m["chainedLabel"] == r"unll $\rightarrow$ DPO"
    assert m["setupModel"] == r"tiny\_llama (2 layers)"
    assert m["posterSftCutoff"] == "576"
    # every macro name is a valid control word and the file renders
    assert all(re.fullmatch(r"[A-Za-z]+", name) for name in m)
    paper.render_macros(m)


def test_claim_verdicts(table):
    v = paper.claim_verdicts(table)
    # unll sqrt: alpha 0.1 [0.65, 0.85] vs alpha 1 [0.40, 0.60]: disjoint -> holds
    assert v["alpha"]["verdict"] == "holds"
    assert v["alpha"]["spread"] == pytest.approx(0.25)
    assert (v["alpha"]["best_alpha"], v["alpha"]["worst_alpha"]) == (0.1, 1.0)
    # negative share 0.10 (best) < 0.30 (DPO seed mean)
    assert v["negative"]["verdict"] == "holds"
    # unll on 50 rows 0.68 > DPO on 200 rows 0.66
    assert v["efficiency"]["verdict"] == "holds"
    assert (v["efficiency"]["unll_n"], v["efficiency"]["dpo_n"]) == (50, 200)
    # chained 0.72 < unll main 0.75
    assert v["chained"]["verdict"] == "does not hold"
    assert v["chained"]["best_other"] == pytest.approx(0.75)


def test_claims_fail_the_other_way(table):
    table.loc[table["name"] == "unll-sqrt-a1-s0", ["win_rate", "ci_low", "ci_high"]] = [0.7, 0.6, 0.8]
    table.loc[table["name"] == "unll-n50-s0", "win_rate"] = 0.6
    table.loc[table["name"] == "chain-s0", "win_rate"] = 0.9
    v = paper.claim_verdicts(table)
    assert v["alpha"]["verdict"] == "does not hold"  # [0.65, 0.85] overlaps [0.6, 0.8]
    assert v["efficiency"]["verdict"] == "does not hold"
    assert v["chained"]["verdict"] == "holds"


def test_small_run_gives_na_not_missing_macros(table):
    small = table[table["group"] == "main"].iloc[:1]  # one DPO run, nothing else
    m = paper.paper_macros(small, STATS)
    full = paper.paper_macros(table, STATS)
    # the same fixed macros exist (the paper compiles whatever the grid); per-label ones vary
    fixed = {k for k in full if not k.startswith("winRateMain")}
    assert fixed <= set(m)
    assert m["winRateBest"] == "n/a" and m["bestLabel"] == "n/a"
    assert m["claimAlphaVerdict"] == "cannot be tested"
    assert m["claimChainedVerdict"] == "cannot be tested"
    assert m["winRateDPO"] == "0.600"
    empty = paper.paper_macros(table.iloc[:0], STATS)
    assert fixed <= set(empty) and empty["nSeeds"] == "0"


def test_main_tex_uses_only_defined_macros(table):
    """Every run-dependent macro main.tex uses is generated (or has a default there)."""
    tex = open("paper/main.tex").read()
    defined = set(paper.paper_macros(table, STATS))
    defined |= set(re.findall(r"\\(?:newcommand|providecommand)\{\\([A-Za-z]+)\}", tex))
    used = set(re.findall(r"\\([A-Za-z]+)", tex))
    generated_style = {u for u in used if re.match(
        r"(winRate|fracNeg|claim|sft|pref|eff|alpha[A-Z]|best|chained|n[A-Z]|setup|poster|betaMain)", u)}
    assert generated_style - defined == set()


def test_build_pdf_without_tex_writes_hint_and_returns_false(tmp_path):
    log, pdf = tmp_path / "build.log", tmp_path / "main.pdf"
    built = paper.build_pdf(tmp_path, pdf, log, tmp_path / "build", engine=None)
    assert built is False
    assert not pdf.exists()
    text = log.read_text()
    assert "apt-get install" in text and "latexmk" in text and "not built" in text


def test_build_pdf_without_tex_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert paper.find_tex() is None
    assert paper.build_pdf(tmp_path, tmp_path / "main.pdf", tmp_path / "b.log", tmp_path / "b") is False


def test_tex_commands_pdflatex_fallback_runs_bibtex_between():
    cmds = paper.tex_commands("pdflatex", "main.tex", "/tmp/b")
    assert [c[0] for c in cmds][-2:] == ["pdflatex", "pdflatex"]
    assert cmds[0][0] == "pdflatex" and "-output-directory=/tmp/b" in cmds[0]
    assert paper.tex_commands("latexmk", "main.tex", "/tmp/b")[0][:2] == ["latexmk", "-pdf"]


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="needs latexmk (TeX Live)")
def test_build_pdf_with_tex_compiles_and_reports_errors(tmp_path):
    (tmp_path / "main.tex").write_text(
        "\\documentclass{article}\\input{m}\\begin{document}\\x\\end{document}\n")
    (tmp_path / "m.tex").write_text(paper.render_macros({"x": paper.latex_escape("50% a_b")}))
    assert paper.build_pdf(tmp_path, tmp_path / "out.pdf", tmp_path / "b.log", tmp_path / "b")
    assert (tmp_path / "out.pdf").read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(tmp_path / "out.pdf"), "-"],
                              capture_output=True, text=True).stdout
        # "%" was escaped (else the rest of the line is a comment); OT1 draws "_" as a rule
        assert re.search(r"50% a.b", text)
    (tmp_path / "main.tex").write_text("\\documentclass{article}\\begin{document}\\undefined\\end{document}\n")
    with pytest.raises(RuntimeError, match="failed"):
        paper.build_pdf(tmp_path, tmp_path / "out2.pdf", tmp_path / "b2.log", tmp_path / "b2")
