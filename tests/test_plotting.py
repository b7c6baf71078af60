"""Figures on small synthetic tables, tested through the data each one draws (dppo.report.plotting.Plot):
labels unique, every count stated, every run a claim uses present, values as in the tables."""

import re

import numpy as np
import pandas as pd
import pytest

from dppo.evaluate import claims, run_selection
from dppo.report import plotting
from dppo.report.result_files import read_win_rates

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _row(name, group, loss, f, alpha, n_train, n_seeds, win, label=None, frac_neg=0.2):
    return {"name": name, "label": label or (f"{loss} ({f})" if f else loss.upper()),
            "group": group, "loss": loss, "f": f, "alpha": alpha, "n_train": n_train, "unll_level": "token_sum",
            "n_seeds": n_seeds, "win_rate": win, "win_rate_low": win - 0.05, "win_rate_high": win + 0.05,
            "mean_reward": 0.1, "frac_negative": frac_neg, "n_prompts": 100, "baseline": "dpo",
            "d_win_rate": win - 0.62, "d_win_rate_low": win - 0.65, "d_win_rate_high": win - 0.59,
            "d_win_rate_mde": 0.04, "d_frac_negative": frac_neg - 0.3, "d_frac_negative_low": frac_neg - 0.35,
            "d_frac_negative_high": frac_neg - 0.25}


def full_grid() -> pd.DataFrame:
    """Every group of the poster's grid, three seeds for DPO; main runs use all rows (n_train
    empty, 200 rows), the data-efficiency group subsets of 50 and 100."""
    rows = [_row("dpo", "main", "dpo", None, None, None, 3, 0.62, frac_neg=0.30)]
    for loss in ("minll", "unll", "conll"):
        rows.append(_row(f"{loss}-linear-a0.1-s0", "main", loss, "linear", 0.1, None, 1, 0.65))
        for f in ("linear", "sqrt"):
            for alpha, bump in ((0.01, 0.0), (1.0, 0.1)):
                rows.append(_row(f"{loss}-{f}-a{alpha}-n200-s0", "alpha_sweep", loss, f, alpha,
                                 200, 1, 0.55 + bump + (0.05 if loss == "unll" else 0)))
    for n in (50, 100):
        rows.append(_row(f"dpo-n{n}-s0", "data_efficiency", "dpo", None, None, n, 1, 0.5 + n / 1000))
        rows.append(_row(f"unll-linear-a0.1-n{n}-s0", "data_efficiency", "unll", "linear", 0.1,
                         n, 1, 0.6 + n / 1000))
    rows.append(_row("chain-s0", "chained", "dpo", None, None, 50, 1, 0.9, label="unll → DPO"))
    rows.append(_row("ipo-s0", "3d_variants", "ipo", None, None, None, 1, 0.58, label="IPO"))
    return pd.DataFrame(rows)


def one_seed_main_only() -> pd.DataFrame:
    """What the smallest run may give: DPO and one penalty loss, nothing else."""
    return pd.DataFrame([_row("dpo-s0", "main", "dpo", None, None, 20, 1, 0.5),
                         _row("unll-sqrt-a0.1-s0", "main", "unll", "sqrt", 0.1, 20, 1, 0.55)])


def _check_files(tmp_path, plot, stem):
    """The figure's PDF and PNG are valid, and its CSV reads back as the data it drew."""
    pdf, png, csv = (tmp_path / f"{stem}.{ext}" for ext in ("pdf", "png", "csv"))
    plot.save(pdf, png, csv)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must be renamed away"
    back = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    assert list(back.columns[:len(plotting.DATA_COLUMNS)]) == list(plotting.DATA_COLUMNS)
    assert len(back) == len(plot.data)
    return pdf, png


def test_pick_runs_the_baseline_and_the_named_or_best_penalty_variant():
    runs = run_selection.pick_runs(full_grid(), baseline="dpo", dppo="unll-linear-a0.1-s0")
    assert runs["dpo"]["name"] == "dpo" and runs["dppo"]["name"] == "unll-linear-a0.1-s0"
    # without a named variant: the best one; unll alpha=1.0 sweeps score 0.55+0.1+0.05 = 0.70
    best = run_selection.pick_runs(full_grid(), baseline="dpo", dppo=None)
    assert best["dppo"]["name"] == "unll-linear-a1.0-n200-s0" and "α=1" in best["dppo"]["label"]
    assert run_selection.pick_runs(full_grid().iloc[:0], baseline="dpo", dppo=None) == {}


# ----------------------------------------------------------- checks on what a figure draws


def _label_text(row) -> str:
    return " | ".join(str(row[c]) for c in ("panel_title", "series", "x_label", "y_label"))


def assert_counts_stated(data: pd.DataFrame) -> None:
    """Every count behind a mark (prompts, seeds, answers, rows) is printed in its series label,
    panel title or an axis label: '800 prompts', '3 seeds', '1 or 3 seeds'."""
    for _, row in data.iterrows():
        text = _label_text(row)
        for column, unit in plotting.COUNT_UNITS.items():
            if pd.notna(row[column]):
                n = f"{int(row[column]):,}"
                assert re.search(rf"(?<![\d.,]){n}(?![\d.,])[^;()]*?{unit}", text), \
                    f"{column}={n} not stated in {text!r}"


def assert_labels_unique(data: pd.DataFrame, position: str) -> None:
    """No label names two runs at one position of a panel, and no mark is drawn twice."""
    marks = data[data["run"] != ""]
    per_label = marks.groupby(["panel", "series", position], dropna=False)["run"].nunique()
    assert (per_label <= 1).all(), per_label[per_label > 1]
    assert not data.duplicated(["panel", "series", "x", "y"]).any()


def assert_runs_one_to_one(data: pd.DataFrame) -> None:
    """Bar and row charts: within a panel every run has one label and every label one run."""
    for _, panel in data.groupby("panel"):
        assert panel["series"].is_unique and panel["run"].is_unique


def test_hparam_search_draws_alpha_as_run_no_dodge(tmp_path):
    plot = plotting.fig_hparam_search(full_grid())
    data = plot.data
    assert list(dict.fromkeys(data["panel"])) == ["minll", "unll", "conll"]
    line = data[(data["panel"] == "unll") & data["series"].str.startswith("linear")]
    # the points sit at their alpha (alpha 0.1 of main joins the linear line): no jitter
    assert line["x"].tolist() == [0.01, 0.1, 1.0]
    assert line["y"].tolist() == pytest.approx([0.6, 0.65, 0.7])
    sweep = full_grid().set_index("name")
    assert all(sweep.loc[r.run, "alpha"] == r.x for r in data[data["x"].notna()].itertuples())
    dpo = data[data["run"] == "dpo"]
    assert len(dpo) == 3 and dpo["y"].eq(0.62).all() and dpo["x"].isna().all()  # the reference in every panel
    assert dpo["series"].iloc[0] == "DPO (3 seeds)" and data["y_label"].iloc[0] == "win rate vs SFT (100 prompts)"
    assert_labels_unique(data, "x")
    assert_counts_stated(data)
    _check_files(tmp_path, plot, "hparam_search")


def test_paradigms_one_bar_per_run_of_every_group(tmp_path):
    grid = full_grid()
    plot = plotting.fig_paradigms(grid)
    data = plot.data
    # every run, the alpha sweep and the subsets included: a claim may compare any two
    assert data["run"].tolist() == grid["name"].tolist()
    assert data["x"].tolist() == pytest.approx(grid["win_rate"].tolist())
    # DPO on all rows and on 50 share the label "DPO": the row count tells them apart
    assert data["series"].iloc[0] == "DPO, all rows (3 seeds)"
    assert "DPO, 50 rows (1 seed)" in set(data["series"])
    assert_runs_one_to_one(data)
    assert_counts_stated(data)
    _check_files(tmp_path, plot, "paradigms")


def test_reward_hist_shares_of_answers_with_counts(tmp_path):
    per_seed = pd.DataFrame({"prompt_id": np.arange(200), "reward": np.linspace(-0.5, 1.5, 200)})  # 50 below 0
    scores = {"SFT": pd.DataFrame({"prompt_id": np.arange(200), "reward": np.linspace(-1, 1, 200)}),
              "DPO": pd.concat([per_seed.assign(seed=s) for s in range(3)]),
              "unll (sqrt)": pd.DataFrame({"reward": np.r_[np.full(3, -1.0), np.full(7, 2.0)]}),
              "missing": None}
    plot = plotting.fig_reward_hist(scores, runs={"DPO": "dpo", "unll (sqrt)": "unll"})
    data = plot.data
    series = list(dict.fromkeys(data["series"]))
    assert series == ["SFT: 200 answers (200 prompts); reward < 0: 50%",
                      "DPO: 600 answers (200 prompts x 3 seeds); reward < 0: 25%",
                      "unll (sqrt): 10 answers (10 prompts); reward < 0: 30%"]
    # shares of each model's answers: SFT (1 per prompt) and DPO (3 per prompt) on one scale
    assert data.groupby("series", sort=False)["y"].sum().tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert data["y_label"].iloc[0] == "share of answers per bin"
    assert set(data["run"]) == {"", "dpo", "unll"}
    assert_labels_unique(data, "x")
    assert_counts_stated(data)
    _check_files(tmp_path, plot, "reward_hist")


def test_data_efficiency_points_name_their_own_runs_when_numbers_coincide():
    """Two methods whose subset runs share loss, size and win rate: each point is its own run
    (matching runs by their numbers would give both points one run's name and counts)."""
    grid = full_grid()
    twin = _row("unll-sqrt-a0.1-n50-s0", "data_efficiency", "unll", "sqrt", 0.1, 50, 3, 0.65)
    grid = pd.concat([grid, pd.DataFrame([twin])], ignore_index=True)
    data = plotting.fig_data_efficiency(grid, n_full=200).data
    at_50 = data.loc[(data["x"] == 50) & (data["marker"] == "line") & data["series"].str.startswith("unll"), "run"]
    assert sorted(at_50) == ["unll-linear-a0.1-n50-s0", "unll-sqrt-a0.1-n50-s0"]


def test_data_efficiency_lines_and_chained_star(tmp_path):
    plot = plotting.fig_data_efficiency(full_grid(), n_full=200)
    data = plot.data
    dpo = data[data["series"].str.startswith("DPO")]
    # subsets 50, 100 from data_efficiency; 200 = the main run on all rows
    assert dpo["x"].tolist() == [50, 100, 200] and dpo["y"].tolist() == pytest.approx([0.55, 0.6, 0.62])
    assert dpo["run"].tolist() == ["dpo-n50-s0", "dpo-n100-s0", "dpo"]
    assert dpo["series"].iloc[0] == "DPO (1 or 3 seeds)"  # the main run's label names the method
    unll = data[data["series"].str.startswith("unll (linear)")]
    assert unll["y"].tolist() == pytest.approx([0.65, 0.7, 0.65])
    star = data[data["marker"] == "star"]
    assert star["run"].tolist() == ["chain-s0"] and star["x"].tolist() == [50]
    assert_labels_unique(data, "x")
    assert_counts_stated(data)
    # without n_full the full-data points have no x and are left out
    no_full = plotting.fig_data_efficiency(full_grid()).data
    assert no_full.loc[no_full["series"].str.startswith("DPO"), "x"].tolist() == [50, 100]
    _check_files(tmp_path, plot, "data_efficiency")


def _metrics(n, with_gen):
    steps = np.arange(n)
    return pd.DataFrame({"step": steps, "loss": 0.69 - 0.001 * steps, "dpo": 0.69 - 0.002 * steps,
                         "logp_chosen": -50 - 0.1 * steps,
                         "logp_rejected": -60 - steps,
                         "logp_gen": (-20 - 0.5 * steps) if with_gen else [None] * n,
                         "frac_r_neg": 0.1})


def test_dynamics_shows_the_penalty_as_a_difference_from_dpo(tmp_path):
    dpo = pd.concat([_metrics(40, True).assign(seed=s) for s in (0, 1)])
    unll = pd.concat([_metrics(40, True).assign(seed=0), _metrics(40, True).assign(seed=1, logp_chosen=-40.0)])
    plot = plotting.fig_dynamics({"DPO": dpo, "unll": unll}, runs={"DPO": "dpo", "unll": "unll"})
    data = plot.data
    assert set(data["panel"]) == {"logp", "delta", "loss", "fired"}
    base = data[data["panel"] == "logp"]
    assert set(base["run"]) == {"dpo"}
    # the baseline's own log-probs: linear series, the centred rolling mean leaves the interior as is
    rejected = base[base["series"] == "$y_l$ (rejected), DPO (2 seeds)"].set_index("x")["y"]
    assert rejected[20.0] == pytest.approx(-80.0)
    # the penalty run minus DPO: zero where they agree, the seed mean's shift where they do not
    delta = data[data["panel"] == "delta"]
    assert set(delta["run"]) == {"unll"}
    assert delta[delta["series"].str.startswith("$y_l$")]["y"].abs().max() == pytest.approx(0.0)
    chosen = delta[delta["series"].str.startswith("$y_w$")].set_index("x")["y"]
    assert chosen[20.0] == pytest.approx((-52.0 - 40.0) / 2 - (-52.0))
    assert data.loc[data["panel"] == "fired", "y"].eq(0.1).all()
    assert_labels_unique(data, "x")
    assert_counts_stated(data)
    _check_files(tmp_path, plot, "dynamics")


def test_dynamics_leaves_out_a_series_nobody_logged():
    data = plotting.fig_dynamics({"DPO": _metrics(40, False), "unll": _metrics(40, False)}).data
    assert not data["series"].str.contains("gen").any()


def test_differences_one_unique_row_per_experiment_but_the_baseline(tmp_path):
    grid = full_grid()
    forms = grid[grid["name"] == "unll-linear-a0.1-s0"].assign(group="unll_forms")
    grid = pd.concat([grid, forms.assign(name="unll-ts", unll_level="token_sum"),
                      forms.assign(name="unll-tm", unll_level="token_mean")], ignore_index=True)
    grid.loc[grid["name"] == "unll-linear-a0.1-s0", "unll_level"] = "sequence"
    plot = plotting.fig_differences(grid)
    data = plot.data
    win = data[data["panel"] == "d_win_rate"]
    assert win["run"].tolist() == grid.loc[grid["name"] != "dpo", "name"].tolist()
    assert win["series"].iloc[0] == "minll (linear), α=0.1 (1 seed)"  # table order from the top
    # one label and alpha, three unlikelihood forms: the form tells them apart
    label = win.set_index("run")["series"]
    assert label["unll-linear-a0.1-s0"] == "unll (linear), α=0.1, sequence (1 seed)"
    assert label["unll-ts"] == "unll (linear), α=0.1, token sum, all rows (1 seed)"
    assert label["unll-tm"] == "unll (linear), α=0.1, token mean (1 seed)"
    assert label["unll-linear-a0.1-n50-s0"] == "unll (linear), α=0.1, token sum, 50 rows (1 seed)"
    assert_runs_one_to_one(data)
    assert_counts_stated(data)
    _check_files(tmp_path, plot, "differences")


def test_run_labels_fall_back_to_the_run_name():
    rows = pd.DataFrame([{"name": "a", "label": "X", "loss": "dpo"}, {"name": "b", "label": "X", "loss": "dpo"}])
    assert plotting.run_labels(rows) == ["X [a]", "X [b]"]


def test_every_run_a_claim_uses_is_in_some_figure():
    """The runs the claims compare (dppo.evaluate.claims) are drawn: a reader can see them."""
    from test_paper import CLAIMS, SETTINGS, _tables

    table, prompts = _tables({"dpo": (0.5, 0.3), "unll": (0.7, 0.1), "unll_a1": (0.3, 0.5),
                              "unll_small": (0.7, 0.1), "chained": (0.9, 0.05)})
    verdicts = claims.test_claims(table, prompts, CLAIMS, SETTINGS)
    used = set(verdicts[["a", "b"]].stack().dropna())
    assert used == {"dpo", "unll", "unll_a1", "unll_small", "chained"}
    drawn = set()
    for make in (plotting.fig_hparam_search, plotting.fig_paradigms, plotting.fig_differences,
                 plotting.fig_data_efficiency):
        data = make(table).data
        assert_counts_stated(data)
        drawn |= set(data["run"])
    assert used <= drawn


def test_smooth_matches_manual_window():
    values = pd.Series([0.0, 10.0, 0.0, 10.0, 0.0])
    assert list(plotting.smooth(values, 3)) == pytest.approx([5, 10 / 3, 20 / 3, 10 / 3, 5])


def test_length_dist_cutoff_line(tmp_path):
    lengths = pd.Series(np.arange(1, 101))
    stats = {"percentile": 95.0, "cutoff": 95}
    plot = plotting.fig_length_dist({"SFT": (stats, lengths), "preference": (stats, lengths[:50])})
    data = plot.data
    assert list(dict.fromkeys(data["panel"])) == ["SFT", "preference"]
    bins = data[data["series"] == "rows"]
    assert bins.groupby("panel", sort=False)["y"].sum().tolist() == [100, 50]  # every row in some bin
    cut = data[data["series"] == "p95 = 95"].set_index("panel")
    assert cut["x"].tolist() == [95, 95] and cut.loc["SFT", "y"] == pytest.approx(0.95)  # 95 of 100 rows fit
    assert data.loc[data["panel"] == "SFT", "panel_title"].iloc[0] == "SFT: 100 rows, 95% <= cut"
    assert_labels_unique(data, "x")
    assert_counts_stated(data)
    _check_files(tmp_path, plot, "length_dist")


@pytest.mark.parametrize("make", [
    plotting.fig_hparam_search, plotting.fig_paradigms, plotting.fig_data_efficiency, plotting.fig_differences])
@pytest.mark.parametrize("table", [one_seed_main_only, lambda: full_grid().iloc[:0]])
def test_small_runs_do_not_crash(tmp_path, make, table):
    plot = make(table())
    assert_counts_stated(plot.data)
    _check_files(tmp_path, plot, "small")


def test_empty_inputs_give_a_note(tmp_path):
    for plot in (plotting.fig_reward_hist({}), plotting.fig_dynamics({}),
                 plotting.fig_length_dist({})):
        texts = [t.get_text() for t in plot.figure.axes[0].texts]
        assert texts and texts[0].startswith("no ")
        assert plot.data.empty and list(plot.data.columns) == list(plotting.DATA_COLUMNS)
        _check_files(tmp_path, plot, "empty")


def test_paper_size_fonts():
    plotting.apply_style()
    import matplotlib.pyplot as plt

    sizes = [plt.rcParams[k] for k in ("font.size", "axes.labelsize", "xtick.labelsize",
                                       "ytick.labelsize", "legend.fontsize")]
    assert min(float(s) for s in sizes) >= 7
    fig = plotting.fig_paradigms(full_grid()).figure
    assert fig.get_figwidth() == pytest.approx(plotting.COLUMN_WIDTH)


def test_read_win_rates_keeps_missing_f_as_null(tmp_path):
    path = tmp_path / "win_rates.csv"
    full_grid().to_csv(path, index=False)
    df = read_win_rates(path)
    assert df.loc[df["loss"] == "dpo", "f"].isna().all()
    assert run_selection.pick_runs(df, "dpo", None)["dppo"]["name"] == "unll-linear-a1.0-n200-s0"


def test_ygen_drift_shows_every_round_and_seed_with_its_counts(tmp_path):
    drift = pd.DataFrame([{"experiment": "unll_onpolicy", "round": k, "seed": seed, "prompts": 1200,
                           "changed_share": 0.1 * k + seed / 100, "logp_old_mean": -5.0 - k, "logp_new_mean": -3.0}
                          for seed in (0, 1) for k in (2, 3)])
    plot = plotting.fig_ygen_drift(drift)
    data = plot.data
    changed = data[data["panel"] == "changed"]
    assert sorted(changed["series"].unique()) == ["unll_onpolicy, seed 0", "unll_onpolicy, seed 1"]
    assert changed.sort_values(["series", "x"])["y"].tolist() == pytest.approx([0.2, 0.3, 0.21, 0.31])
    logp = data[data["panel"] == "logp"]
    assert len(logp) == 8 and set(logp.loc[logp["series"].str.endswith("new y_gen"), "y"]) == {-3.0}
    assert_labels_unique(data, "x")
    assert_counts_stated(data)
    _check_files(tmp_path, plot, "ygen_drift")
    assert plotting.fig_ygen_drift(drift.iloc[:0]).data.empty
