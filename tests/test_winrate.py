"""Win rate, bootstrap interval and LaTeX table against hand computations and a slow reference loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dppo import winrate
from dppo.winrate import (
    bootstrap_interval, bootstrap_means, compare, latex_table, paired_rewards, win_rate_table,
)


def _scores(ids, rewards) -> pd.DataFrame:
    return pd.DataFrame({"prompt_id": ids, "prompt": [f"q{i}" for i in ids], "response": "r", "reward": rewards})


SFT = _scores(["a", "b", "c", "d"], [1.0, 1.0, 3.0, 0.0])
# Rows in another order than the reference: the join must pair by prompt_id.
MODEL = _scores(["d", "c", "b", "a"], [2.0, 2.0, 1.0, 3.0])  # a: win, b: tie, c: loss, d: win


def test_hand_computed_win_rate_with_ties():
    result = compare(MODEL, SFT, n_boot=200, seed=0)
    assert result["win_rate"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert (result["n_wins"], result["n_ties"], result["n_losses"]) == (2, 1, 1)
    assert result["mean_reward"] == pytest.approx(2.0)
    assert result["mean_reward_reference"] == pytest.approx(1.25)
    assert result["n_prompts"] == 4


def test_share_of_negative_rewards():
    model = _scores(["a", "b", "c", "d"], [-1.0, 0.0, -0.5, 2.0])
    assert compare(model, SFT, n_boot=10, seed=0)["frac_negative"] == pytest.approx(0.5)  # 0 is not negative


def test_different_prompt_sets_are_an_error():
    with pytest.raises(ValueError, match=r"1 only in 'exp'.*1 only in the reference"):
        paired_rewards(_scores(["a", "b", "c", "e"], [0.0] * 4), SFT, "exp")
    with pytest.raises(ValueError, match="repeat prompt_id 'a'"):
        paired_rewards(_scores(["a", "a", "c", "d"], [0.0] * 4), SFT, "exp")
    with pytest.raises(ValueError, match="missing rewards"):
        paired_rewards(_scores(["a", "b", "c", "d"], [0.0, np.nan, 0.0, 0.0]), SFT, "exp")


def test_interval_contains_estimate_and_shrinks_with_n():
    pattern = np.array([1.0, 0.0, 0.5, 1.0, 1.0])
    widths = []
    for repeats in (20, 320):
        values = np.tile(pattern, repeats)
        low, high = bootstrap_interval(values, n_boot=2000, seed=3)
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
    assert bootstrap_interval(values, 500, seed=7) == bootstrap_interval(values, 500, seed=7)
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
    low, high = bootstrap_interval(values, 300, seed=11)
    assert (low, high) == pytest.approx(tuple(np.percentile(expected, [2.5, 97.5])))


EXPERIMENTS = [
    {"name": "dpo-n4-s0", "loss": "dpo", "f": None, "alpha": None, "beta": 0.1, "zeta": None, "n_train": 4,
     "seed": 0, "init": "sft", "group": "main", "label": "DPO"},
    {"name": "unll-sqrt-a0.1-n4-s0", "loss": "unll", "f": "sqrt", "alpha": 0.1, "beta": 0.1, "zeta": None,
     "n_train": 4, "seed": 0, "init": "sft", "group": "alpha_sweep", "label": "unll (sqrt) & 50%_x → DPO"},
]


@pytest.fixture()
def table():
    scores = {"sft": SFT, "dpo-n4-s0": MODEL, "unll-sqrt-a0.1-n4-s0": _scores(["a", "b", "c", "d"], [-1.0, -1.0, 3.0, 0.0])}
    return win_rate_table(scores, EXPERIMENTS, reference="sft", n_boot=300, seed=0)


def test_win_rate_table_rows(table):
    assert table["name"].tolist() == ["dpo-n4-s0", "unll-sqrt-a0.1-n4-s0"]
    assert table["mean_reward_reference"].tolist() == pytest.approx([1.25, 1.25])
    assert table["frac_negative_reference"].tolist() == [0.0, 0.0]
    assert table.loc[0, "win_rate"] == pytest.approx(0.625)
    # unll: a, b lose; c, d tie -> (0 + 0 + .5 + .5) / 4.
    assert table.loc[1, "win_rate"] == pytest.approx(0.25)
    assert table.loc[1, "mean_reward"] == pytest.approx(0.25)
    assert table.loc[1, "frac_negative"] == pytest.approx(0.5)
    assert table.loc[1, ["loss", "f", "alpha", "n_train", "group"]].tolist() == ["unll", "sqrt", 0.1, 4, "alpha_sweep"]
    # Integer columns stay integers in the CSV; DPO's missing f and alpha stay empty.
    assert table.to_csv(index=False).splitlines()[1].split(",")[3:11] == ["dpo", "", "", "0.1", "", "4", "0", "sft"]
    assert (table["ci_low"] <= table["win_rate"]).all() and (table["win_rate"] <= table["ci_high"]).all()
    for col in ("name", "label", "group", "loss", "f", "alpha", "n_train", "seed", "win_rate", "ci_low", "ci_high",
                "mean_reward", "frac_negative", "n_prompts"):
        assert col in table.columns


def test_win_rate_table_needs_every_experiment():
    with pytest.raises(ValueError, match=r"experiment\(s\) \['unll-sqrt-a0.1-n4-s0'\]"):
        win_rate_table({"sft": SFT, "dpo-n4-s0": MODEL}, EXPERIMENTS)
    with pytest.raises(ValueError, match="reference model 'sft'"):
        win_rate_table({"dpo-n4-s0": MODEL}, EXPERIMENTS)


def test_latex_table_content(table):
    tex = latex_table(table, caption="Win rates.", label="tab:wr")
    lines = tex.splitlines()
    # No placement option: paper/main.tex renews `table` as `table*`, which would print "[t]".
    assert lines[0] == r"\begin{table}" and lines[-1] == r"\end{table}"
    assert r"\toprule" in lines and r"\bottomrule" in lines
    # Under the header, under the reference line, and at the group change main -> alpha_sweep.
    assert lines.count(r"\midrule") == 3
    assert r"\texttt{sft} & reference & -- & -- & -- & -- & 1.250 & 0.000 \\" in lines
    unll = next(line for line in lines if "unll" in line)
    assert unll.startswith(
        r"\texttt{unll-sqrt-a0.1-n4-s0} & unll (sqrt) \& 50\%\_x $\rightarrow$ DPO & 0.1 & 4 & 0.250 & ["
    )
    assert unll.endswith(r" & 0.250 & 0.500 \\")  # mean of (-1, -1, 3, 0); 2 of 4 negative
    dpo = next(line for line in lines if "dpo-n4-s0" in line)
    low, high = table.loc[0, ["ci_low", "ci_high"]]
    assert dpo == rf"\texttt{{dpo-n4-s0}} & DPO & -- & 4 & 0.625 & [{low:.3f}, {high:.3f}] & 2.000 & 0.000 \\"
    assert any(line.startswith(r"\ifdim\wd0>\linewidth\ifdefined\resizebox") for line in lines)  # shrink if too wide
    assert r"\caption{Win rates.}" in lines and r"\label{tab:wr}" in lines
