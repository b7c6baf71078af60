"""Figures of the 3D-properties toy model. Inputs are the per-step records of
:func:`dppo.toy.training.run_all` only, so restyling never retrains. Each function returns a
:class:`dppo.report.plotting.Plot`: the figure and the table of the curves it draws (per panel and
curve the seed mean and +-1 sd per step, with the number of seeds, which every panel title states)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dppo.report.plotting import Plot, count_text, drawn  # noqa: E402
from dppo.toy.model import SCENARIOS  # noqa: E402

CURVES = (  # (column, legend label, colour)
    ("p_chosen", r"optimal $\pi(y^*|x)$", "tab:green"),
    ("p_rejected", "rejected mass", "tab:red"),
    ("p_unseen", "unseen mass (9, 10)", "tab:purple"),
    ("p_other_chosen", "other prompts' optimal", "tab:gray"),
)
SCENARIO_TITLES = {s.number: s.label for s in SCENARIOS}


def _style() -> None:
    sns.set_theme(style="whitegrid", context="paper", font_scale=1.0)


def seed_band(runs: pd.DataFrame, column: str, log10: bool = False) -> pd.DataFrame:
    """Mean and standard deviation over seeds per step (of log10 values when ``log10``: the
    gradient magnitudes span dozens of decades, so their spread is only readable in log space)."""
    values = runs[column].astype(float)
    if log10:
        with np.errstate(divide="ignore"):
            values = np.log10(values)
    frame = runs[["step"]].assign(value=values.replace([np.inf, -np.inf], np.nan))
    grouped = frame.groupby("step")["value"]
    return pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std(ddof=0).fillna(0.0)})


def _band(ax, runs: pd.DataFrame, column: str, label: str, color: str, rows: list, panel: str,
          log10: bool = False, title: str | None = None) -> None:
    """Draw the seed band of ``column`` and add its points to ``rows`` (the figure's data);
    ``title``: the title the panel sits under, when it is its column's (default: its own)."""
    band = seed_band(runs, column, log10=log10)
    ax.plot(band.index, band["mean"], color=color, label=label, lw=1.4)
    ax.fill_between(band.index, band["mean"] - band["sd"], band["mean"] + band["sd"], color=color, alpha=0.25, lw=0)
    n_seeds = runs["seed"].nunique()
    rows += [{"panel": panel, "series": label, "x": float(step), "y": mean, "low": mean - sd, "high": mean + sd,
              "n_seeds": n_seeds, "panel_title": title or ax.get_title(), "x_label": ax.get_xlabel(), "y_label": ax.get_ylabel()}
             for step, mean, sd in zip(band.index, band["mean"], band["sd"])]


def _title(number: int, runs: pd.DataFrame) -> str:
    """A scenario's panel title with the seeds its bands rest on."""
    return f"{SCENARIO_TITLES[number]} ({count_text(runs['seed'].nunique(), 'seed')})"


def plot_dynamics(runs: pd.DataFrame, loss: str = "dpo") -> Plot:
    """The seed's Figures 2 and 3 for one loss: per scenario (columns), the optimal, rejected,
    unseen and other-optimal probability over training; top row linear, bottom row log10."""
    _style()
    data = runs[runs["loss"] == loss]
    scenarios = sorted(data["scenario"].unique())
    fig, axes = plt.subplots(2, len(scenarios), figsize=(2.6 * len(scenarios), 4.6), sharex=True, squeeze=False)
    rows: list = []
    for col, number in enumerate(scenarios):
        cell = data[data["scenario"] == number]
        for row, (y_label, log10) in enumerate((("probability", False), (r"$\log_{10}$ probability", True))):
            ax = axes[row, col]
            ax.set_title(_title(number, cell) if row == 0 else "", fontsize=8)
            ax.set_xlabel("training step" if row == 1 else "")
            ax.set_ylabel(y_label if col == 0 else "")
            for column, label, color in CURVES:
                _band(ax, cell, column, label, color, rows, f"S{number} {'log10' if log10 else 'linear'}", log10,
                      title=_title(number, cell))
        axes[0, col].set_ylim(-0.02, 1.02)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(CURVES), frameon=False, bbox_to_anchor=(0.5, -0.01))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return Plot(fig, drawn(rows))


def plot_gradients(runs: pd.DataFrame, loss: str = "dpo") -> Plot:
    """|dL/dpi(y_w)| and |dL/dpi(y_l)| over training (seed's Figure 10 / Corollary 1), log10."""
    _style()
    data = runs[runs["loss"] == loss]
    scenarios = sorted(data["scenario"].unique())
    fig, axes = plt.subplots(1, len(scenarios), figsize=(2.6 * len(scenarios), 2.6), sharex=True, squeeze=False)
    rows: list = []
    for col, number in enumerate(scenarios):
        ax = axes[0, col]
        cell = data[data["scenario"] == number]
        ax.set_title(_title(number, cell), fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylabel(r"$\log_{10}$ gradient magnitude" if col == 0 else "")
        _band(ax, cell, "grad_chosen", r"$|\partial L/\partial \pi(y_w)|$", "tab:green", rows, f"S{number}", log10=True)
        _band(ax, cell, "grad_rejected", r"$|\partial L/\partial \pi(y_l)|$", "tab:red", rows, f"S{number}", log10=True)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return Plot(fig, drawn(rows))


def plot_grid(runs: pd.DataFrame, losses: Sequence[str] | None = None) -> Plot:
    """Scenario (columns) x loss (rows): optimal, rejected, unseen and other-optimal probability."""
    _style()
    losses = list(losses) if losses is not None else list(dict.fromkeys(runs["loss"]))
    scenarios = sorted(runs["scenario"].unique())
    fig, axes = plt.subplots(
        len(losses), len(scenarios), figsize=(1.9 * len(scenarios) + 0.6, 1.25 * len(losses) + 0.6),
        sharex=True, sharey=True, squeeze=False,
    )
    rows: list = []
    for row, loss in enumerate(losses):
        for col, number in enumerate(scenarios):
            ax = axes[row, col]
            cell = runs[(runs["loss"] == loss) & (runs["scenario"] == number)]
            if row == 0:
                ax.set_title(_title(number, cell), fontsize=7)
            if col == 0:
                ax.set_ylabel(loss, fontsize=8)
            if row == len(losses) - 1:
                ax.set_xlabel("step", fontsize=7)
            for column, label, color in CURVES:
                _band(ax, cell, column, label, color, rows, f"S{number} {loss}", title=_title(number, cell))
            if cell["diverged"].any():
                ax.text(0.97, 0.5, "diverged", transform=ax.transAxes, ha="right", fontsize=7, color="black")
        axes[-1, 0].set_ylim(-0.02, 1.02)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(CURVES), frameon=False, fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return Plot(fig, drawn(rows))
