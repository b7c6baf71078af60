"""The paper's generated text: every number and run-dependent word of ``paper/main.tex`` is a
macro of ``paper/tables/macros.tex``, written here from the results tables (win rates, the
claim verdicts, the premise statistics, the penalty scale, the per-prompt scores) and the data
statistics, so no number, and no verdict, is typed by hand.

A win rate (ties count one half) hides how often answers tie: every sentence that says one model
beats another gives its wins, ties and losses beside it (:func:`outcome_text`)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import pandas as pd

from dppo.data.stats import train_count
from dppo.evaluate.claims import NOT_TESTED
from dppo.evaluate.run_selection import label_with_alpha
from dppo.evaluate.winrate import per_prompt
from dppo.report.latex import NA, fmt_float, fmt_percent, latex_escape, macro_name
from dppo.settings import penalized_losses

# The poster's own numbers, quoted by the paper next to ours (kept here, not in the .tex).
POSTER_NUMBERS = {
    "posterSftCutoff": "576",
    "posterPrefCutoff": "989",
    "posterEffUnllRows": "8k",
    "posterEffDpoRows": "60k",
    "posterWinRateChained": "0.977",
}
CLAIM_MACROS = {"alpha": "Alpha", "negative": "Negative", "efficiency": "Efficiency", "chained": "Chained"}


def _signed(value) -> str:
    return NA if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):+.3f}"


def _row(table: pd.DataFrame, name) -> dict | None:
    rows = table[table["name"] == name]
    return rows.iloc[0].to_dict() if len(rows) else None


def outcome_text(wins: int, ties: int, losses: int, unit: str) -> str:
    """'wins 11.5%, ties 67.0% and loses 21.5% of 2,400 answers' (plain text: escape for LaTeX)."""
    n = wins + ties + losses
    if n == 0:
        return f"no {unit}s to compare"
    share = (f"{100 * k / n:.1f}%" for k in (wins, ties, losses))
    return "wins {}, ties {} and loses {} of {:,} {}".format(*share, n, unit + ("" if n == 1 else "s"))


def head_to_head(prompt_scores: pd.DataFrame, a: str, b: str) -> tuple[int, int, int]:
    """A's answers against B's, prompt by prompt (each model's mean reward over its seeds on the
    prompt, the unit every comparison of the paper is made on): (wins, ties, losses) of A."""
    means = per_prompt(prompt_scores[prompt_scores["name"].isin([a, b])])
    wide = means.pivot(index="prompt_id", columns="name", values="reward").dropna()
    if a not in wide or b not in wide:
        return 0, 0, 0
    diff = wide[a] - wide[b]
    return int((diff > 0).sum()), int((diff == 0).sum()), int((diff < 0).sum())


def _against_sft(row) -> str:
    """A run's answers against SFT's on the same prompts, from the win-rate table's counts."""
    if row is None or pd.isna(row.get("n_wins")):
        return NA
    text = outcome_text(int(row["n_wins"]), int(row["n_ties"]), int(row["n_losses"]), "answer")
    n = int(row["n_wins"]) + int(row["n_ties"]) + int(row["n_losses"])
    changed = row.get("n_changed")
    if n and changed is not None and not pd.isna(changed):
        text += f"; {100 * (n - int(changed)) / n:.1f}% of them are SFT's own answer"
        if int(changed):
            text += f", and {100 * float(row['win_share_of_changed']):.1f}% of the {int(changed):,} others win"
    return text


def _conditions(conditional_on: str) -> str:
    """'world+seeds+machine' -> 'run's world, its seeds and the machine'."""
    words = {"world": "run's world", "seeds": "its seeds", "seed": "its seed", "machine": "machine"}
    parts = [words.get(p, p) for p in str(conditional_on).split("+") if p]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and the " + parts[-1]


def claim_sentence(claim: Mapping, labels: Mapping[str, str], prompt_scores: pd.DataFrame | None = None) -> str:
    """One sentence per claim, from its verdict and numbers; a claim on the win rate also says
    how often A's answers beat, tie and lose to B's (:func:`head_to_head`)."""
    if claim["verdict"] == NOT_TESTED:
        return f"Not tested by this configuration ({claim['test']})."
    metric = "share of negative rewards" if claim["metric"] == "negative" else "win rate against SFT"
    a, b = labels.get(claim["a"], claim["a"]), labels.get(claim["b"], claim["b"])
    duel = ""
    if claim["metric"] == "win" and prompt_scores is not None:
        duel = (f" Prompt by prompt, {a} {outcome_text(*head_to_head(prompt_scores, claim['a'], claim['b']), 'prompt')}"
                f" against {b}.")
    return (f"{claim['verdict'].capitalize()}: {a} minus {b}, {metric}, {float(claim['diff']):+.3f} "
            f"[{float(claim['low']):+.3f}, {float(claim['high']):+.3f}] ({100 * float(claim['level']):.1f}% interval "
            f"over {claim['over']}, conditional on the {_conditions(claim['conditional_on'])}; "
            f"smallest detectable difference {float(claim['mde']):.3f}; {int(claim['n_seeds_a'])} and "
            f"{int(claim['n_seeds_b'])} seeds).{duel}")


def paper_macros(win_rates: pd.DataFrame, claims: pd.DataFrame, premise: Mapping, penalty: pd.DataFrame,
                 data_stats: Mapping[str, Mapping], baseline: str, dppo: str | None,
                 setup: Mapping[str, str] | None = None, prompt_scores: pd.DataFrame | None = None) -> dict[str, str]:
    """Every number and run-dependent word the paper's text uses, as macro name -> value.

    ``prompt_scores``: every model's reward per (seed, prompt) (``results/tables/prompt_scores.parquet``),
    for the prompt-by-prompt comparisons. Missing runs give 'n/a' values, never missing macros,
    so the paper always compiles."""
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
    m["nRuns"] = str(int(wr["n_seeds"].sum())) if len(wr) else "0"
    m["nEvalPrompts"] = str(int(wr["n_prompts"].max())) if len(wr) else NA
    m["fracNegSFT"] = fmt_percent(wr["frac_negative_reference"].iloc[0] if len(wr) else None)
    base = _row(wr, baseline)
    m["baselineName"] = latex_escape(baseline)
    m["betaMain"] = NA if base is None else f"{float(base['beta']):g}"
    m["nTrainMain"] = str(train_count(data_stats["pref"], "rows_kept")) if "pref" in data_stats else NA
    m["nSeedsBaseline"] = NA if base is None else str(int(base["n_seeds"]))
    for prefix, row in (("DPO", base), ("Dppo", _row(wr, dppo))):
        m[f"winRate{prefix}"] = fmt_float(None if row is None else row["win_rate"])
        m[f"winRate{prefix}Low"] = fmt_float(None if row is None else row["win_rate_low"])
        m[f"winRate{prefix}High"] = fmt_float(None if row is None else row["win_rate_high"])
        m[f"fracNeg{prefix}"] = fmt_percent(None if row is None else row["frac_negative"])
        m[f"outcomes{prefix}"] = latex_escape(_against_sft(row))
    dppo_row = _row(wr, dppo)
    m["dppoLabel"] = latex_escape(label_with_alpha(dppo_row)) if dppo_row else NA
    m["dppoDiffWin"] = _signed(dppo_row["d_win_rate"] if dppo_row else None)
    m["dppoDiffWinLow"] = _signed(dppo_row["d_win_rate_low"] if dppo_row else None)
    m["dppoDiffWinHigh"] = _signed(dppo_row["d_win_rate_high"] if dppo_row else None)
    duel = (head_to_head(prompt_scores, dppo, baseline) if dppo_row and base and prompt_scores is not None
            else None)
    m["dppoOutcomesVsDPO"] = latex_escape(outcome_text(*duel, "prompt")) if duel else NA

    # Power: the comparisons the claims rest on (every run with at least two seeds but the baseline).
    resting = wr[(wr["n_seeds"] >= 2) & (wr["name"] != baseline)]
    half = (resting["d_win_rate_high"] - resting["d_win_rate_low"]) / 2
    m["nSeedsClaims"] = str(int(resting["n_seeds"].min())) if len(resting) else NA
    m["maxHalfWidth"] = fmt_float(half.max() if len(half) else None)
    m["maxMde"] = fmt_float(resting["d_win_rate_mde"].max() if len(resting) else None)
    m["medianMde"] = fmt_float(resting["d_win_rate_mde"].median() if len(resting) else None)

    labels = {row["name"]: label_with_alpha(row) for row in wr.to_dict("records")}
    for claim in claims.to_dict("records"):
        pre = "claim" + CLAIM_MACROS[claim["claim"]]
        m[f"{pre}Verdict"] = latex_escape(claim["verdict"])
        m[f"{pre}Sentence"] = latex_escape(claim_sentence(claim, labels, prompt_scores))

    for key in ("ygen_wrong", "triggered", "ygen_is_rejected_of_triggered", "ygen_is_rejected", "chosen_wrong",
                "ygen_at_least_chosen_of_triggered"):
        m[macro_name("premise", key)] = fmt_percent(premise.get(key))

    for row in penalty.to_dict("records"):
        m[macro_name("ratio", row["name"])] = fmt_float(row["ratio_first"], 2)
    main_ratios = penalty[penalty["name"].isin(wr.loc[wr["group"] == "main", "name"])]
    for loss in penalized_losses():
        rows = main_ratios[(main_ratios["loss"] == loss) & (main_ratios["f"] == "linear")]
        m[macro_name("ratioLinear", loss)] = fmt_float(rows["ratio_first"].iloc[0] if len(rows) else None, 2)

    m.update(POSTER_NUMBERS)
    for name, text in (setup or {}).items():
        m[name] = latex_escape(text)
    return m


# ------------------------------------------------------------------ what the text may assert

# Words that state a verdict or a finding about the runs (a claim's verdict, a toy property,
# where a penalty fires). A sentence of the paper's source with one must get the verdict from
# the tables: through a macro whose value is a verdict, a sentence or a scenario list generated
# from them; unless it defines a verdict (a condition: "holds when ...") or attributes a claim
# to its authors ("\citet{x} report ...").
FINDING_WORDS = re.compile(
    r"\b(holds?|refut\w*|inconclusive|reproduc\w*|fires?|fired|diverge[sd]?|bit for bit|identical|dispers\w*|"
    r"degrad\w*|drastic|never saw|never seen|beats?|wins)\b", re.IGNORECASE)
TABLE_VERDICT_MACRO = re.compile(r"\\[A-Za-z]+(?:Verdict|Sentence|Where|In|Outcomes[A-Za-z]*|outcomes[A-Za-z]+)(?![A-Za-z])")
CONDITION = re.compile(r"\b(when|if|while|unless|whether)\b")
ATTRIBUTION = re.compile(r"\\citet\{[^}]+\}\s+(?:report|describe|explain|show|find|claim|argue)")
_EMPHASIZED_CLAIM = re.compile(r"\\emph\{[^{}]*\}")  # the poster's claims, quoted as they are tested


def tex_sentences(tex: str) -> list[str]:
    """The prose sentences of a LaTeX source: comments, the preamble and headings dropped, a
    paragraph or a float's boundary ends a sentence, whitespace collapsed, split after a full stop."""
    text = re.sub(r"(?<!\\)%.*", "", tex)
    text = text.split(r"\begin{document}", 1)[-1]
    text = re.sub(r"\\(?:paragraph|section|subsection)\*?\{[^{}]*\}", "\n\n", text)  # headings name, not assert
    text = re.sub(r"\\(?:begin|end)\{[^{}]*\}", "\n\n", text)
    sentences = []
    for block in re.split(r"\n\s*\n", text):
        sentences += re.split(r"(?<=[.!?])\s+(?=[A-Z\\])", re.sub(r"\s+", " ", block).strip())
    return [s for s in sentences if s]


def unbacked_assertions(tex: str) -> list[str]:
    """Sentences of ``tex`` that assert a verdict or a finding (:data:`FINDING_WORDS`) without a
    generated verdict macro, a condition or an attribution: each is a claim typed by hand that
    no table checks."""
    flagged = []
    for sentence in tex_sentences(tex):
        prose = _EMPHASIZED_CLAIM.sub("", sentence)
        if not FINDING_WORDS.search(prose):
            continue
        if TABLE_VERDICT_MACRO.search(sentence) or CONDITION.search(prose) or ATTRIBUTION.search(sentence):
            continue
        flagged.append(sentence)
    return flagged
