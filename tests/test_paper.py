"""LaTeX helpers, the verdicts on the poster's claims (paired tests), the generated macros and
the PDF builder's paths."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dppo.evaluate import claims
from dppo.evaluate.winrate import against_sft, paired_differences, per_prompt, per_seed_scores
from dppo.report import latex, paper, pdf
from dppo.report.win_rate_table import win_rate_table
from dppo.settings import ClaimsSettings, WinRateSettings

N = 300
SETTINGS = WinRateSettings(n_boot=300, seed=0, level=0.95, baseline="dpo")
CLAIMS = ClaimsSettings(dppo="unll", small_subset="unll_small", chained="chained", margin=0.03)


def _experiment(name, loss="dpo", group="main", alpha=0.1, n_train=None, seeds=(0, 1, 2), f="linear"):
    return {"name": name, "label": name, "group": group, "loss": loss, "f": f, "alpha": alpha, "beta": 0.1,
            "zeta": 0.1, "unll_level": "token_sum", "n_train": n_train, "seeds": list(seeds), "init": "sft"}


EXPERIMENTS = [
    _experiment("dpo"),
    _experiment("unll", "unll"),
    _experiment("unll_a1", "unll", "alpha_sweep", alpha=1.0, seeds=(0,)),
    _experiment("unll_small", "unll", "data_efficiency", n_train=50),
    _experiment("chained", "dpo", "chained", n_train=50),
]


def _scores(p_win: float, p_negative: float, rng, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Rewards against an SFT reward of 0: +1 (a win) with p_win, else -1 (negative) with
    p_negative / (1 - p_win) of the rest, else 0 (a tie: SFT's own answer, "r")."""
    frames = []
    for seed in seeds:
        u = rng.random(N)
        reward = np.where(u < p_win, 1.0, np.where(u < p_win + p_negative, -1.0, 0.0))
        frames.append(pd.DataFrame({"seed": seed, "prompt_id": [f"p{i}" for i in range(N)], "prompt": "q",
                                    "response": np.where(reward == 0.0, "r", "changed"), "reward": reward}))
    return pd.concat(frames, ignore_index=True)


def _tables(shape: dict[str, tuple[float, float]]):
    rng = np.random.default_rng(0)
    scores = {"sft": _scores(0.0, 0.0, rng, seeds=(0,))}
    for e in EXPERIMENTS:
        scores[e["name"]] = _scores(*shape[e["name"]], rng, seeds=e["seeds"])
    long = per_seed_scores(scores)
    prompts = per_prompt(long)
    names = [e["name"] for e in EXPERIMENTS]
    table = win_rate_table(EXPERIMENTS, against_sft(long, prompts, names, SETTINGS),
                           paired_differences(prompts, names, "dpo", SETTINGS))
    return table, long


def test_verdicts_hold_when_the_differences_are_clear():
    table, prompts = _tables({"dpo": (0.5, 0.3), "unll": (0.7, 0.1), "unll_a1": (0.3, 0.5),
                              "unll_small": (0.7, 0.1), "chained": (0.9, 0.05)})
    verdicts = claims.test_claims(table, prompts, CLAIMS, SETTINGS).set_index("claim")
    assert verdicts["verdict"].to_dict() == {"alpha": "holds", "negative": "holds", "efficiency": "holds",
                                             "chained": "holds"}
    assert verdicts.loc["chained", "b"] == "unll"  # the best other run by win rate
    assert verdicts.loc["negative", "diff"] == pytest.approx(-0.2, abs=0.05)
    assert verdicts.loc["alpha", "level"] == pytest.approx(0.95)  # one loss swept: no correction
    for row in verdicts.itertuples():
        assert row.low <= row.diff <= row.high and row.mde > 0


def test_verdicts_are_refuted_the_other_way_and_inconclusive_in_between():
    table, prompts = _tables({"dpo": (0.6, 0.1), "unll": (0.6, 0.4), "unll_a1": (0.6, 0.4),
                              "unll_small": (0.3, 0.1), "chained": (0.6, 0.1)})
    verdicts = claims.test_claims(table, prompts, CLAIMS, SETTINGS).set_index("claim")
    assert verdicts.loc["negative", "verdict"] == "refuted"  # more negative rewards than DPO
    assert verdicts.loc["efficiency", "verdict"] == "refuted"
    assert verdicts.loc["chained", "verdict"] == "inconclusive"  # same as the others: the interval holds 0
    # unll and unll_a1 have the same win probability: within the margin at 300 prompts?
    alpha = verdicts.loc["alpha"]
    assert alpha["verdict"] == ("refuted" if -0.03 < alpha["low"] and alpha["high"] < 0.03 else "inconclusive")


def test_missing_experiments_are_not_tested():
    table, prompts = _tables({"dpo": (0.5, 0.3), "unll": (0.7, 0.1), "unll_a1": (0.3, 0.5),
                              "unll_small": (0.7, 0.1), "chained": (0.9, 0.05)})
    none = ClaimsSettings()
    verdicts = claims.test_claims(table, prompts, none, SETTINGS).set_index("claim")
    assert verdicts.loc[["negative", "efficiency", "chained"], "verdict"].tolist() == ["not tested"] * 3
    one_alpha = table[table["name"] != "unll_a1"]
    assert claims.test_claims(one_alpha, prompts, none, SETTINGS).set_index("claim").loc["alpha", "verdict"] == \
        "not tested"


STATS = {"sft": {"percentile": 95.0, "cutoff": 576, "percentiles": {"50": 210.4, "95": 576.0},
                 "rows_in": 1000, "rows_kept": 990, "rows_truncated": 49,
                 "dropped": {"multi_turn": 7, "empty": 3}},
         "pref": {"percentile": 95.0, "cutoff": 989, "percentiles": {"95": 989.0},
                  "rows_in": 500, "rows_kept": 500, "rows_truncated": 25, "dropped": {}}}
PREMISE = {"ygen_wrong": 0.5, "triggered": 0.25, "ygen_is_rejected_of_triggered": 0.1}
PENALTY = pd.DataFrame([{"name": "unll", "loss": "unll", "f": "linear", "alpha": 0.1, "ratio_first": 1.234}])


def _macros(**kw):
    table, prompts = _tables({"dpo": (0.5, 0.3), "unll": (0.7, 0.1), "unll_a1": (0.3, 0.5),
                              "unll_small": (0.7, 0.1), "chained": (0.9, 0.05)})
    verdicts = claims.test_claims(table, prompts, CLAIMS, SETTINGS)
    return paper.paper_macros(table, verdicts, PREMISE, PENALTY, STATS, baseline="dpo", dppo="unll",
                              prompt_scores=prompts, **kw)


def test_latex_helpers():
    assert latex.macro_name("winRateMain", "unll (sqrt)") == "winRateMainUnllSqrt"
    assert latex.macro_name("a0.1") == "aZeroPointOne"
    assert latex.macro_name("sft", "P", "95") == "sftPNineFive"
    assert latex.macro_name("unll → DPO 60k") == "unllDPOSixZeroK"
    with pytest.raises(ValueError):
        latex.macro_name("→ ()")
    assert latex.latex_escape("a_b & 50% #1 {x} ~^") == r"a\_b \& 50\% \#1 \{x\} \textasciitilde{}\textasciicircum{}"
    assert latex.latex_escape("unll → DPO, α=0.1") == r"unll $\rightarrow$ DPO, $\alpha$=0.1"
    text = latex.render_macros({"winRateDPO": "0.620", "sftCutoff": "576"}, header="test")
    assert text.splitlines() == ["% test", r"\newcommand{\winRateDPO}{0.620}", r"\newcommand{\sftCutoff}{576}"]
    with pytest.raises(ValueError, match="letters only"):
        latex.render_macros({"winRate2": "1"})
    with pytest.raises(ValueError, match="unbalanced"):
        latex.render_macros({"bad": "{"})


def test_paper_macros_values():
    m = _macros(setup={"setupModel": "tiny_llama (2 layers)"})
    assert m["sftCutoff"] == "576" and m["prefCutoff"] == "989" and m["sftPercentile"] == "95"
    assert m["sftRowsDropped"] == "10" and m["prefRowsDropped"] == "0"
    assert m["sftPFiveZero"] == "210" and m["sftPNineFive"] == "576"
    assert m["nExperiments"] == "5" and m["nRuns"] == "13" and m["nEvalPrompts"] == str(N)
    assert m["claimNegativeVerdict"] == "holds" and m["claimNegativeSentence"].startswith("Holds: unll, ")
    assert r"95.0\% interval" in m["claimNegativeSentence"] and "3 and 3 seeds" in m["claimNegativeSentence"]
    assert m["premiseYgenWrong"] == r"50.0\%" and m["ratioUnll"] == "1.23"
    assert m["setupModel"] == r"tiny\_llama (2 layers)" and m["posterSftCutoff"] == "576"
    assert m["nSeedsClaims"] == "3" and float(m["maxHalfWidth"]) > 0
    assert all(re.fullmatch(r"[A-Za-z]+", name) for name in m)
    latex.render_macros(m)


def test_main_tex_uses_only_defined_macros():
    """Every run-dependent macro main.tex uses is generated (or has a default there)."""
    tex = open("paper/main.tex").read()
    defined = set(_macros(setup={"setupModel": "m", "setupSftData": "s", "setupPrefData": "p", "setupReward": "r",
                                 "setupDesign": "d"}))
    defined |= set(re.findall(r"\\(?:newcommand|providecommand)\{\\([A-Za-z]+)\}", tex))
    used = set(re.findall(r"\\([A-Za-z]+)", tex))
    generated_style = {u for u in used if re.match(
        r"(winRate|outcomes|fracNeg|claim|sft[A-Z]|pref[A-Z]|dppo|ratio|premise|max[A-Z]|median[A-Z]|baseline|n[A-Z]|"
        r"setup|poster|betaMain)", u)}
    assert generated_style - defined == set()


def test_win_rates_come_with_wins_ties_and_losses():
    """A win rate (ties count half) hides the ties: the text gives wins, ties and losses beside it,
    against SFT from the win-rate table's counts and prompt by prompt against DPO."""
    table, prompts = _tables({"dpo": (0.5, 0.3), "unll": (0.7, 0.1), "unll_a1": (0.3, 0.5),
                              "unll_small": (0.7, 0.1), "chained": (0.9, 0.05)})
    m = _macros()
    dpo = table.set_index("name").loc["dpo"]
    n = int(dpo["n_wins"] + dpo["n_ties"] + dpo["n_losses"])
    assert n == N * 3  # answers: prompts x seeds
    changed = int(dpo["n_wins"] + dpo["n_losses"])  # a tie here is SFT's own answer
    assert dpo["n_changed"] == changed
    assert m["outcomesDPO"] == (rf"wins {100 * dpo['n_wins'] / n:.1f}\%, ties {100 * dpo['n_ties'] / n:.1f}\% and "
                                rf"loses {100 * dpo['n_losses'] / n:.1f}\% of {n:,} answers; "
                                rf"{100 * dpo['n_ties'] / n:.1f}\% of them are SFT's own answer, and "
                                rf"{100 * dpo['n_wins'] / changed:.1f}\% of the {changed:,} others win")
    # prompt by prompt: each model's mean reward over its seeds, unll against DPO
    wide = per_prompt(prompts).pivot(index="prompt_id", columns="name", values="reward")
    diff = wide["unll"] - wide["dpo"]
    wins, ties, losses = (int(k) for k in ((diff > 0).sum(), (diff == 0).sum(), (diff < 0).sum()))
    assert paper.head_to_head(prompts, "unll", "dpo") == (wins, ties, losses) and wins + ties + losses == N
    assert m["dppoOutcomesVsDPO"] == latex.latex_escape(paper.outcome_text(wins, ties, losses, "prompt"))
    assert m["claimNegativeSentence"].count("Prompt by prompt") == 0  # not a win-rate claim
    duel = paper.outcome_text(*paper.head_to_head(prompts, "unll_small", "dpo"), "prompt")
    assert latex.latex_escape(f"Prompt by prompt, unll_small, α=0.1 {duel} against dpo.") in m["claimEfficiencySentence"]
    assert paper.outcome_text(1, 2, 1, "prompt") == "wins 25.0%, ties 50.0% and loses 25.0% of 4 prompts"


PAPER_SOURCES = ("paper/main.tex", *sorted(str(p) for p in Path("paper/sections").glob("*.tex")))


def test_every_win_rate_sentence_gives_wins_ties_and_losses():
    for path in PAPER_SOURCES:
        for sentence in paper.tex_sentences(open(path).read()):
            if re.search(r"\\winRate(DPO|Dppo)(?![A-Za-z])", sentence):
                assert re.search(r"\\(outcomes|dppoOutcomes)[A-Za-z]*", sentence), sentence


def test_the_text_asserts_no_verdict_or_finding_by_hand():
    """Every verdict and toy property in the paper comes from a macro the tables generate (a
    verdict, a sentence or a scenario list); a sentence that states one in words no table
    backs fails here, e.g. the dispersion claim typed into the abstract."""
    for path in PAPER_SOURCES:
        assert paper.unbacked_assertions(open(path).read()) == [], path


@pytest.mark.parametrize("sentence", [
    # sentences the audit found: each asserts what no table of the run checks
    r"DPO lowers both likelihoods and moves probability mass to responses it never saw~\cite{yan2024threed}.",
    r"It does not hold (S1--S4: \toyScenOneDpoDispersionUnseen, \toyScenTwoDpoDispersionUnseen).",
    r"Dispersion therefore holds only in the per-prompt reading.",
    r"DPO wins \winRateDPO{} [\winRateDPOLow, \winRateDPOHigh] of the comparisons with SFT.",
    r"The penalties never fire in S1, S3 and S4, where they are bit for bit DPO.",
])
def test_a_finding_typed_by_hand_is_flagged(sentence):
    assert paper.unbacked_assertions(sentence) == [sentence]


@pytest.mark.parametrize("sentence", [
    r"The penalties fire \toyPenaltiesFireWhere.",  # the list comes from the runs
    r"It holds \toyDpoDispersionUnseenWhere{} (S1--S4: \toyScenOneDpoDispersionUnseen).",
    r"\citet{yan2024threed} report that DPO moves mass to responses it never saw.",  # their claim, said so
    r"A claim holds when the interval lies above zero.",  # a definition
    r"DPO \outcomesDPO{} against SFT.",
])
def test_a_finding_from_the_tables_passes(sentence):
    assert paper.unbacked_assertions(sentence) == []


def test_build_pdf_without_tex_writes_hint_and_returns_false(tmp_path):
    log, out = tmp_path / "build.log", tmp_path / "main.pdf"
    assert pdf.build_pdf(tmp_path, out, log, tmp_path / "build", engine=None) is False
    assert not out.exists()
    text = log.read_text()
    assert "apt-get install" in text and "latexmk" in text and "not built" in text


def test_build_pdf_without_tex_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert pdf.find_tex() is None
    assert pdf.build_pdf(tmp_path, tmp_path / "main.pdf", tmp_path / "b.log", tmp_path / "b") is False


def test_tex_commands_pdflatex_fallback_runs_bibtex_between():
    cmds = pdf.tex_commands("pdflatex", "main.tex", "/tmp/b")
    assert [c[0] for c in cmds][-2:] == ["pdflatex", "pdflatex"]
    assert cmds[0][0] == "pdflatex" and "-output-directory=/tmp/b" in cmds[0]
    assert pdf.tex_commands("latexmk", "main.tex", "/tmp/b")[0][:2] == ["latexmk", "-pdf"]


@pytest.mark.skipif(shutil.which("latexmk") is None, reason="needs latexmk (TeX Live)")
def test_build_pdf_with_tex_compiles_and_reports_errors(tmp_path):
    (tmp_path / "main.tex").write_text(
        "\\documentclass{article}\\input{m}\\begin{document}\\x\\end{document}\n")
    (tmp_path / "m.tex").write_text(latex.render_macros({"x": latex.latex_escape("50% a_b")}))
    assert pdf.build_pdf(tmp_path, tmp_path / "out.pdf", tmp_path / "b.log", tmp_path / "b")
    assert (tmp_path / "out.pdf").read_bytes()[:5] == b"%PDF-"
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", str(tmp_path / "out.pdf"), "-"],
                              capture_output=True, text=True).stdout
        # "%" was escaped (else the rest of the line is a comment); OT1 draws "_" as a rule
        assert re.search(r"50% a.b", text)
    (tmp_path / "main.tex").write_text("\\documentclass{article}\\begin{document}\\undefined\\end{document}\n")
    with pytest.raises(RuntimeError, match="failed"):
        pdf.build_pdf(tmp_path, tmp_path / "out2.pdf", tmp_path / "b2.log", tmp_path / "b2")
