"""Figures on small synthetic tables: files valid, series/bars as expected, small runs ok."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer

from dppo.evaluate import run_selection
from dppo.report import plotting
from dppo.report.result_files import read_win_rates
from dppo.runtime.io import save_figure

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


def _check_files(tmp_path, fig, stem):
    pdf, png = tmp_path / f"{stem}.pdf", tmp_path / f"{stem}.png"
    save_figure(fig, pdf, png)
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must be renamed away"
    return pdf, png


def _errorbars(ax):
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_pick_runs_the_baseline_and_the_named_or_best_penalty_variant():
    runs = run_selection.pick_runs(full_grid(), baseline="dpo", dppo="unll-linear-a0.1-s0")
    assert runs["dpo"]["name"] == "dpo" and runs["dppo"]["name"] == "unll-linear-a0.1-s0"
    # without a named variant: the best one; unll alpha=1.0 sweeps score 0.55+0.1+0.05 = 0.70
    best = run_selection.pick_runs(full_grid(), baseline="dpo", dppo=None)
    assert best["dppo"]["name"] == "unll-linear-a1.0-n200-s0" and "α=1" in best["dppo"]["label"]
    assert run_selection.pick_runs(full_grid().iloc[:0], baseline="dpo", dppo=None) == {}


def test_hparam_search_panels_and_lines(tmp_path):
    fig = plotting.fig_hparam_search(full_grid())
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["minll", "unll", "conll"]
    for ax in axes:
        # linear and sqrt: two alpha lines per panel (alpha 0.1 of main joins the linear line)
        lines = _errorbars(ax)
        assert len(lines) == 2
        xs = sorted(lines[0].lines[0].get_xdata())  # dodged by a factor 10**-0.02
        assert xs == pytest.approx(np.array([0.01, 0.1, 1.0]) * 10 ** -0.02)
        assert ax.get_xscale() == "log"  # alphas span a factor of 100
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert dashed and dashed[0].get_ydata()[0] == pytest.approx(0.62)  # DPO
    _check_files(tmp_path, fig, "hparam_search")


def test_paradigms_one_bar_per_method(tmp_path):
    fig = plotting.fig_paradigms(full_grid())
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)][0]
    # main: DPO, minll, unll, conll; chained; IPO -> 6 bars
    assert len(bars) == 6
    widths = [b.get_width() for b in bars]
    assert widths[0] == pytest.approx(0.62) and widths[-2] == pytest.approx(0.9)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "DPO" and labels[-1] == "IPO"  # table order, top to bottom
    assert bars[0].get_y() > bars[-1].get_y()
    _check_files(tmp_path, fig, "paradigms")


def test_reward_hist_series_and_negative_share(tmp_path):
    rng = np.random.default_rng(0)
    scores = {"SFT": pd.DataFrame({"reward": rng.normal(0, 1, 200)}),
              "DPO": pd.DataFrame({"reward": rng.normal(0.5, 1, 200)}),
              "unll (sqrt)": pd.DataFrame({"reward": np.r_[np.full(3, -1.0), np.full(7, 2.0)]}),
              "missing": None}
    fig = plotting.fig_reward_hist(scores)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == 3
    assert labels[2] == "unll (sqrt) (r<0: 30%)"
    _check_files(tmp_path, fig, "reward_hist")


def test_data_efficiency_lines_and_chained_star(tmp_path):
    fig = plotting.fig_data_efficiency(full_grid(), n_full=200)
    ax = fig.axes[0]
    bars = _errorbars(ax)
    assert len(bars) == 3  # DPO line, unll line, chained star
    # subsets 50, 100 from data_efficiency; 200 = the main run on all rows
    assert list(bars[0].lines[0].get_xdata()) == [50, 100, 200]
    assert list(bars[0].lines[0].get_ydata()) == pytest.approx([0.55, 0.6, 0.62])
    assert list(bars[1].lines[0].get_ydata()) == pytest.approx([0.65, 0.7, 0.65])
    assert bars[1].get_label() == "unll (linear)"  # the main run's label names the method
    assert bars[2].lines[0].get_marker() == "*"
    # without n_full the full-data points have no x and are left out
    no_full = plotting.fig_data_efficiency(full_grid())
    assert list(_errorbars(no_full.axes[0])[0].lines[0].get_xdata()) == [50, 100]
    _check_files(tmp_path, fig, "data_efficiency")


def _metrics(n, with_gen):
    steps = np.arange(n)
    return pd.DataFrame({"step": steps, "loss": 0.69 - 0.001 * steps, "dpo": 0.69 - 0.002 * steps,
                         "logp_chosen": -50 - 0.1 * steps,
                         "logp_rejected": -60 - steps,
                         "logp_gen": (-20 - 0.5 * steps) if with_gen else [None] * n})


def test_dynamics_means_over_seeds_and_skips_null_gen_series(tmp_path):
    two_seeds = pd.concat([_metrics(40, True).assign(seed=0), _metrics(40, True).assign(seed=1, logp_chosen=-40.0)])
    fig = plotting.fig_dynamics({"DPO": _metrics(40, False), "unll": two_seeds})
    (dpo_ax, unll_ax), (dpo_loss, _) = fig.axes[:2], fig.axes[2:]
    assert len(dpo_ax.get_lines()) == 2 and len(unll_ax.get_lines()) == 3
    # linear series: the centred rolling mean leaves the interior unchanged
    assert unll_ax.get_lines()[1].get_ydata()[20] == pytest.approx(-80.0)
    # the chosen log-prob is the mean over the two seeds
    assert unll_ax.get_lines()[0].get_ydata()[20] == pytest.approx((-50 - 2.0 - 40) / 2)
    assert unll_ax.get_title() == "unll (2 seeds)"
    assert len(dpo_loss.get_lines()) == 2  # loss and its DPO term
    _check_files(tmp_path, fig, "dynamics")


def test_differences_one_row_per_experiment_but_the_baseline(tmp_path):
    fig = plotting.fig_differences(full_grid())
    win_ax, neg_ax = fig.axes
    assert len(_errorbars(win_ax)) == len(full_grid()) - 1 == len(_errorbars(neg_ax))
    labels = [t.get_text() for t in win_ax.get_yticklabels()]
    assert labels[-1] == "minll (linear), α=0.1 (1)"  # table order from the top, seeds in brackets
    _check_files(tmp_path, fig, "differences")


def test_smooth_matches_manual_window():
    values = pd.Series([0.0, 10.0, 0.0, 10.0, 0.0])
    assert list(plotting.smooth(values, 3)) == pytest.approx([5, 10 / 3, 20 / 3, 10 / 3, 5])


def test_length_dist_cutoff_line(tmp_path):
    lengths = pd.Series(np.arange(1, 101))
    stats = {"percentile": 95.0, "cutoff": 95}
    fig = plotting.fig_length_dist({"SFT": (stats, lengths), "preference": (stats, lengths)})
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert ax.get_legend_handles_labels()[1] == ["p95 = 95"]  # per panel: cut-offs differ
    assert "95%" in ax.get_title()  # 95 of the 100 rows fit under the cut
    _check_files(tmp_path, fig, "length_dist")


@pytest.mark.parametrize("make", [
    plotting.fig_hparam_search, plotting.fig_paradigms, plotting.fig_data_efficiency, plotting.fig_differences])
@pytest.mark.parametrize("table", [one_seed_main_only, lambda: full_grid().iloc[:0]])
def test_small_runs_do_not_crash(tmp_path, make, table):
    _check_files(tmp_path, make(table()), "small")


def test_empty_inputs_give_a_note(tmp_path):
    for fig in (plotting.fig_reward_hist({}), plotting.fig_dynamics({}),
                plotting.fig_length_dist({})):
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert texts and texts[0].startswith("no ")
        _check_files(tmp_path, fig, "empty")


def test_paper_size_fonts():
    plotting.apply_style()
    import matplotlib.pyplot as plt

    sizes = [plt.rcParams[k] for k in ("font.size", "axes.labelsize", "xtick.labelsize",
                                       "ytick.labelsize", "legend.fontsize")]
    assert min(float(s) for s in sizes) >= 7
    fig = plotting.fig_paradigms(full_grid())
    assert fig.get_figwidth() == pytest.approx(plotting.COLUMN_WIDTH)


def test_read_win_rates_keeps_missing_f_as_null(tmp_path):
    path = tmp_path / "win_rates.csv"
    full_grid().to_csv(path, index=False)
    df = read_win_rates(path)
    assert df.loc[df["loss"] == "dpo", "f"].isna().all()
    assert run_selection.pick_runs(df, "dpo", None)["dppo"]["name"] == "unll-linear-a1.0-n200-s0"
