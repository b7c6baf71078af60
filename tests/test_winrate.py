"""Win rates over seeds, paired differences, bootstrap intervals, MDE and the LaTeX table,
against hand computations and a slow reference loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dppo.evaluate import winrate
from dppo.evaluate.winrate import (
    MDE_Z,
    against_sft,
    bootstrap_interval,
    bootstrap_means,
    difference,
    paired_differences,
    per_prompt,
    per_seed_scores,
)
from dppo.report.table_latex import win_rates_caption, win_rates_latex
from dppo.report.win_rate_table import win_rate_table
from dppo.settings import WinRateSettings

SETTINGS = WinRateSettings(n_boot=400, seed=0, level=0.95, baseline="dpo")


def _scores(ids, rewards, seed=0) -> pd.DataFrame:
    return pd.DataFrame({"seed": seed, "prompt_id": ids, "prompt": [f"q{i}" for i in ids], "response": "r",
                         "reward": rewards})


SFT = _scores(["a", "b", "c", "d"], [1.0, 1.0, 3.0, 0.0])
# Rows in another order than the reference: the join must pair by prompt_id.
DPO = _scores(["d", "c", "b", "a"], [2.0, 2.0, 1.0, 3.0])  # a: win, b: tie, c: loss, d: win
# Two seeds: seed 0 a, b lose, c, d tie; seed 1 wins everywhere.
UNLL = pd.concat([_scores(["a", "b", "c", "d"], [-1.0, -1.0, 3.0, 0.0], seed=0),
                  _scores(["a", "b", "c", "d"], [2.0, 2.0, 4.0, 1.0], seed=1)])
SCORES = {"sft": SFT, "dpo": DPO, "unll": UNLL}


def test_per_prompt_values_are_seed_means():
    prompts = per_prompt(per_seed_scores(SCORES)).set_index(["name", "prompt_id"])
    assert prompts.loc[("dpo", "a"), "win"] == 1.0 and prompts.loc[("dpo", "b"), "win"] == 0.5
    assert prompts.loc[("unll", "a"), "win"] == pytest.approx(0.5)  # lose (seed 0), win (seed 1)
    assert prompts.loc[("unll", "c"), "win"] == pytest.approx(0.75)  # tie, win
    assert prompts.loc[("unll", "a"), "negative"] == pytest.approx(0.5)  # -1 then 2; 0 is not negative
    assert prompts.loc[("unll", "d"), "reward"] == pytest.approx(0.5)
    assert prompts.loc[("unll", "a"), "n_seeds"] == 2


def test_against_sft_by_hand():
    long = per_seed_scores(SCORES)
    table = against_sft(long, per_prompt(long), ["dpo", "unll"], SETTINGS).set_index("name")
    assert table.loc["dpo", "win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert (table.loc["dpo", "n_wins"], table.loc["dpo", "n_ties"], table.loc["dpo", "n_losses"]) == (2, 1, 1)
    # unll: seed 0 (0 + 0 + .5 + .5)/4 = 0.25, seed 1 4/4 = 1 -> 0.625 over prompts of seed means.
    assert table.loc["unll", "win_rate"] == pytest.approx(0.625)
    assert table.loc["unll", "win_rate_seed_sd"] == pytest.approx(np.std([0.25, 1.0], ddof=1))
    assert table.loc["unll", "n_seeds"] == 2 and table.loc["unll", "n_prompts"] == 4
    assert table.loc["unll", "frac_negative"] == pytest.approx(0.25)
    assert table.loc["dpo", "mean_reward_reference"] == pytest.approx(1.25)
    for name in ("dpo", "unll"):
        row = table.loc[name]
        assert row["win_rate_low"] <= row["win_rate"] <= row["win_rate_high"]


def test_exact_matches_with_sft_and_the_win_share_of_changed_answers_by_hand():
    sft = SFT.assign(response=["x", "y", "z", "w"])
    # a: same string as SFT (a tie), b: changed and tied, c: changed and lost, d: changed and won
    dpo = _scores(["a", "b", "c", "d"], [1.0, 1.0, 2.0, 2.0]).assign(response=["x", "y2", "z2", "w2"])
    long = per_seed_scores({"sft": sft, "dpo": dpo})
    mine = long[long["name"] == "dpo"].set_index("prompt_id")
    assert mine.loc[["a", "b", "c", "d"], "same_as_reference"].tolist() == [1.0, 0, 0, 0]
    row = against_sft(long, per_prompt(long), ["dpo"], SETTINGS).iloc[0]
    assert row["n_changed"] == 3 and row["win_share_of_changed"] == pytest.approx(1 / 3)  # d of b, c, d


def test_scores_without_answers_give_no_exact_match_columns():
    long = per_seed_scores({name: t.drop(columns="response") for name, t in SCORES.items()})
    assert "same_as_reference" not in long
    row = against_sft(long, per_prompt(long), ["dpo"], SETTINGS).iloc[0]
    assert pd.isna(row["n_changed"]) and np.isnan(row["win_share_of_changed"])


def test_paired_differences_by_hand_and_paired_resampling():
    prompts = per_prompt(per_seed_scores(SCORES))
    table = paired_differences(prompts, ["dpo", "unll"], "dpo", SETTINGS).set_index("name")
    assert table.loc["dpo", "d_win_rate"] == 0 and table.loc["dpo", "d_win_rate_mde"] == 0
    # per prompt unll - dpo: a .5 - 1, b .5 - .5, c .75 - 0, d .75 - 1
    assert table.loc["unll", "d_win_rate"] == pytest.approx((-0.5 + 0 + 0.75 - 0.25) / 4)
    diffs = np.array([-0.5, 0.0, 0.75, -0.25])
    draws = bootstrap_means(diffs, SETTINGS.n_boot, SETTINGS.seed)
    assert table.loc["unll", "d_win_rate_mde"] == pytest.approx(MDE_Z * draws.std(ddof=1))
    one = difference(prompts, "unll", "dpo", "win", SETTINGS)
    assert one["diff"] == pytest.approx(table.loc["unll", "d_win_rate"])
    assert (one["low"], one["high"]) == pytest.approx((table.loc["unll", "d_win_rate_low"],
                                                       table.loc["unll", "d_win_rate_high"]))


def test_paired_intervals_are_narrower_than_unpaired_for_correlated_models():
    rng = np.random.default_rng(0)
    n = 400
    hard = rng.random(n) < 0.5  # prompts both models find hard
    sft = _scores([f"p{i}" for i in range(n)], np.zeros(n))
    a = _scores(sft["prompt_id"], np.where(hard, -1.0, 1.0) + (rng.random(n) < 0.1))
    b = _scores(sft["prompt_id"], np.where(hard, -1.0, 1.0))
    prompts = per_prompt(per_seed_scores({"sft": sft, "a": a, "b": b}))
    paired = difference(prompts, "a", "b", "win", SETTINGS)
    wins = prompts.pivot(index="prompt_id", columns="name", values="win")
    unpaired = 2 * 1.96 * np.sqrt((wins["a"].var() + wins["b"].var()) / n)  # width were a and b independent
    assert paired["high"] - paired["low"] < 0.5 * unpaired


def test_different_prompt_sets_are_an_error():
    with pytest.raises(ValueError, match=r"'x' \(seed 0\) and 'sft' scored different prompts: 1 only in 'x'"):
        per_seed_scores({"sft": SFT, "x": _scores(["a", "b", "c", "e"], [0.0] * 4)})
    with pytest.raises(ValueError, match="repeat prompt_id 'a'"):
        per_seed_scores({"sft": SFT, "x": _scores(["a", "a", "c", "d"], [0.0] * 4)})
    with pytest.raises(ValueError, match="missing rewards"):
        per_seed_scores({"sft": SFT, "x": _scores(["a", "b", "c", "d"], [0.0, np.nan, 0.0, 0.0])})
    with pytest.raises(ValueError, match="reference model 'sft'"):
        per_seed_scores({"x": DPO})


def test_interval_contains_estimate_and_shrinks_with_n():
    pattern = np.array([1.0, 0.0, 0.5, 1.0, 1.0])
    widths = []
    for repeats in (20, 320):
        values = np.tile(pattern, repeats)
        low, high = bootstrap_interval(values, n_boot=2000, seed=3, level=0.95)
        assert low < values.mean() < high
        widths.append(high - low)
    # 16x the prompts: the interval narrows about 4x.
    assert widths[1] < 0.35 * widths[0]


def test_bootstrap_spread_matches_the_standard_error():
    values = np.random.default_rng(0).choice([0.0, 0.5, 1.0], size=300, p=[0.3, 0.1, 0.6])
    means = bootstrap_means(values, n_boot=4000, seed=1)
    assert means.std() == pytest.approx(values.std() / np.sqrt(values.size), rel=0.06)
    assert means.mean() == pytest.approx(values.mean(), abs=0.003)


def test_seeded_bootstrap_is_deterministic():
    values = np.tile([1.0, 0.0, 0.5], 40)
    assert bootstrap_interval(values, 500, 7, 0.95) == bootstrap_interval(values, 500, 7, 0.95)
    assert not np.array_equal(bootstrap_means(values, 500, seed=7), bootstrap_means(values, 500, seed=8))


def _slow_bootstrap_means(values, n_boot, seed):
    rng = np.random.default_rng(seed)
    n = len(values)
    means = []
    for _ in range(n_boot):
        total = 0.0
        for u in rng.random(n):
            total += values[min(int(u * n), n - 1)]
        means.append(total / n)
    return np.array(means)


def test_vectorised_bootstrap_equals_slow_loop_for_any_block_size(monkeypatch):
    values = np.random.default_rng(4).normal(size=37)  # odd size: block draws must not depend on it
    expected = _slow_bootstrap_means(values, 300, seed=11)
    np.testing.assert_allclose(bootstrap_means(values, 300, seed=11), expected, rtol=0, atol=1e-12)
    monkeypatch.setattr(winrate, "_BOOT_BLOCK", 5 * 37 + 3)  # 5 replicates per block
    np.testing.assert_allclose(bootstrap_means(values, 300, seed=11), expected, rtol=0, atol=1e-12)
    # columns share their resampled rows: the mean of column differences is the difference of means
    both = np.stack([values, values[::-1]], axis=1)
    draws = bootstrap_means(both, 300, seed=11)
    np.testing.assert_allclose(draws[:, 0], expected, rtol=0, atol=1e-12)
    low, high = bootstrap_interval(values, 300, 11, 0.95)
    assert (low, high) == pytest.approx(tuple(np.percentile(expected, [2.5, 97.5])))


EXPERIMENTS = [
    {"name": "dpo", "loss": "dpo", "f": "linear", "alpha": 0.1, "beta": 0.1, "zeta": 0.1, "unll_level": "token_sum",
     "n_train": None, "seeds": [0], "init": "sft", "group": "main", "label": "DPO"},
    {"name": "unll", "loss": "unll", "f": "sqrt", "alpha": 0.1, "beta": 0.1, "zeta": 0.1, "unll_level": "token_sum",
     "n_train": 4, "seeds": [0, 1], "init": "sft", "group": "alpha_sweep", "label": "unll (sqrt) & 50%_x → DPO"},
]


@pytest.fixture()
def table():
    long = per_seed_scores(SCORES)
    prompts = per_prompt(long)
    names = [e["name"] for e in EXPERIMENTS]
    return win_rate_table(EXPERIMENTS, against_sft(long, prompts, names, SETTINGS),
                          paired_differences(prompts, names, "dpo", SETTINGS))


def test_win_rate_table_rows(table):
    assert table["name"].tolist() == ["dpo", "unll"]
    assert table.loc[1, ["loss", "f", "alpha", "n_train", "group", "seeds"]].tolist() == [
        "unll", "sqrt", 0.1, 4, "alpha_sweep", "0 1"]
    # Integer columns stay integers in the CSV; a missing n_train stays empty.
    header, dpo_line = table.to_csv(index=False).splitlines()[:2]
    assert dict(zip(header.split(","), dpo_line.split(",")))["n_train"] == ""
    assert table.loc[1, "n_seeds"] == 2


def test_latex_table_content(table):
    tex = win_rates_latex(table, 0.95, caption="Win rates.", label="tab:wr")
    lines = tex.splitlines()
    # No placement option: paper/main.tex renews `table` as `table*`, which would print "[t]".
    assert lines[0] == r"\begin{table}" and lines[-1] == r"\end{table}"
    assert r"\toprule" in lines and r"\bottomrule" in lines
    # Under the header, under the reference line, and at the group change main -> alpha_sweep.
    assert lines.count(r"\midrule") == 3
    unll = next(line for line in lines if line.startswith(r"\texttt{unll}"))
    low, high = table.loc[1, ["win_rate_low", "win_rate_high"]]
    assert unll.startswith(rf"\texttt{{unll}} & 0.1 & 4 & 2 & 0.625 & [{low:.3f}, {high:.3f}] & ")
    assert any(line.startswith(r"\ifdim\wd0>\linewidth\ifdefined\resizebox") for line in lines)  # shrink if too wide
    assert r"\caption{Win rates.}" in lines and r"\label{tab:wr}" in lines


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_latex_table_names_the_intervals_level(table, level):
    tex = win_rates_latex(table, level, win_rates_caption(table, level))
    percent = f"{100 * level:g}"
    header = next(line for line in tex.splitlines() if line.startswith("Experiment &"))
    assert header.count(f"{percent}\\% CI") == 3 and "CI" not in header.replace(f"{percent}\\% CI", "")
    assert f"with {percent}\\% percentile-bootstrap intervals" in tex
