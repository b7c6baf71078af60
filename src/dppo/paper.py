"""The paper's generated numbers: every number and run-dependent word of ``paper/main.tex`` is
a macro of ``paper/tables/macros.tex``, written here from the win-rate table, the claim
verdicts (:mod:`dppo.claims`) and the data statistics, so no number is typed by hand."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from dppo.claims import aggregate_seeds, best_penalty, claim_verdicts, label_with_alpha
from dppo.latex import NA, fmt_float, fmt_percent, latex_escape, macro_name
from dppo.results import train_count

# The poster's own numbers, quoted by the paper next to ours (kept here, not in the .tex).
POSTER_NUMBERS = {
    "posterSftCutoff": "576",
    "posterPrefCutoff": "989",
    "posterEffUnllRows": "8k",
    "posterEffDpoRows": "60k",
    "posterWinRateChained": "0.977",
}


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
