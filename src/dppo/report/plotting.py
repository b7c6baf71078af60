"""Figures of the DPPO paper: one shared style and one function per figure.

Every function takes already-computed tables (win rates, scores, metrics, data stats),
never a model, so restyling a figure never retrains anything. Every function copes with
what a small run yields (one seed, empty groups, missing runs): it draws what exists and
writes a short note on the axes instead of crashing.

Win-rate tables follow ``dppo.evaluate.winrate``: one row per experiment with columns ``name``,
``label``, ``group``, ``loss``, ``f``, ``alpha``, ``n_train``, ``seed``, ``win_rate``,
``ci_low``, ``ci_high``, ``mean_reward``, ``frac_negative``.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")  # figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Which runs a figure shows is the paper's decision, shared with the macros: dppo.evaluate.claims.
from dppo.evaluate.claims import data_efficiency_rows, label_with_alpha, penalty_sweep_runs  # noqa: E402
from dppo.settings import LOSS_KINDS, WEIGHTING_NAMES, penalized_losses  # noqa: E402

# Widths of a two-column paper (letter, 0.75 in margins): one column, the full text.
COLUMN_WIDTH = 3.3
TEXT_WIDTH = 6.9

# One fixed colour per training paradigm so a method looks the same in every figure.
_PALETTE = sns.color_palette("colorblind", 10)
METHOD_COLORS = {
    "sft": _PALETTE[7],
    "dpo": _PALETTE[0],
    "minll": _PALETTE[1],
    "unll": _PALETTE[2],
    "conll": _PALETTE[4],
    "chained": _PALETTE[3],
    "ipo": _PALETTE[5],
    "slic": _PALETTE[6],
    "flex_dpo": _PALETTE[8],
    "dpo_sft": _PALETTE[9],
}
F_MARKERS = {"linear": "o", "quadratic": "s", "sqrt": "^", "expectile": "D"}
F_ORDER = WEIGHTING_NAMES


def apply_style() -> None:
    """Seaborn 'paper' look with fonts >= 7 pt at the printed size and embeddable fonts."""
    sns.set_theme(context="paper", style="whitegrid", palette="colorblind")
    plt.rcParams.update(
        {
            "font.size": 8,
            "axes.titlesize": 8,
            "axes.labelsize": 8,
            "xtick.labelsize": 7,
            "ytick.labelsize": 7,
            "legend.fontsize": 7,
            "legend.title_fontsize": 7,
            "lines.linewidth": 1.2,
            "lines.markersize": 4,
            "grid.linewidth": 0.5,
            "axes.linewidth": 0.6,
            # TrueType fonts in the PDF: selectable text, accepted by paper venues.
            "pdf.fonttype": 42,
            "ps.fonttype": 42,
            "savefig.bbox": "tight",
            "savefig.pad_inches": 0.02,
        }
    )


def method_color(loss: str | None, group: str | None = None):
    """Colour of a method: the chained run has its own colour whatever its last loss."""
    if group == "chained":
        return METHOD_COLORS["chained"]
    return METHOD_COLORS.get(str(loss), _PALETTE[7])


def _note(ax, text: str) -> None:
    """Say on the axes why nothing is drawn (a small run may lack a group)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes,
            fontsize=7, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_above(fig: Figure, axes, title: str | None = None, ncol: int | None = None) -> None:
    """One legend for all panels, above them, so it never hides data."""
    handles: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(handles.values(), handles.keys(), title=title, loc="lower center",
                   bbox_to_anchor=(0.5, 1.0), ncol=ncol or len(handles), frameon=False)


def _yerr(df: pd.DataFrame, column: str = "win_rate") -> np.ndarray:
    """Asymmetric error bars (2, n) from the interval bounds of ``column``; never negative."""
    low = (df[column] - df[f"{column}_low"]).clip(lower=0).to_numpy(dtype=float)
    high = (df[f"{column}_high"] - df[column]).clip(lower=0).to_numpy(dtype=float)
    return np.vstack([low, high])


def _log_scale_if_wide(ax, values, axis: str = "x") -> None:
    """Log axis when the values are all positive and span more than a factor of 10."""
    values = np.asarray([v for v in values if pd.notna(v)], dtype=float)
    if len(values) and (values > 0).all() and values.max() / values.min() > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _f_sort_key(f) -> int:
    return F_ORDER.index(f) if f in F_ORDER else len(F_ORDER)


# ---------------------------------------------------------------------------- figures


def _panel_row(n_panels: int):
    """One row of panels sharing the y axis: page-wide for several, a column for one."""
    n_panels = max(1, n_panels)
    fig, axes = plt.subplots(1, n_panels, figsize=(TEXT_WIDTH if n_panels > 1 else COLUMN_WIDTH, 2.1),
                             sharey=True, squeeze=False)
    return fig, axes[0]


def fig_hparam_search(win_rates: pd.DataFrame) -> Figure:
    """Win rate vs alpha: one panel per penalty loss, one line per f (poster's search).

    Rows of the alpha-sweep groups with a penalty loss (claims.penalty_sweep_runs); the main-group DPO
    win rate is the dashed reference line, 0.5 (parity with SFT) the dotted one.
    """
    apply_style()
    agg = penalty_sweep_runs(win_rates)
    losses = [loss for loss in penalized_losses() if loss in set(agg["loss"])]
    fig, axes = _panel_row(len(losses))
    if not losses:
        _note(axes[0], "no alpha-sweep runs in this configuration")
        return fig
    dpo = win_rates[(win_rates["group"] == "main") & (win_rates["loss"] == "dpo")]
    for ax, loss in zip(axes, losses):
        sub = agg[agg["loss"] == loss]
        if "unll_level" in sub:  # one line per f: the main unlikelihood form only
            levels = sub["unll_level"].dropna()
            if LOSS_KINDS[loss].token_levels and len(levels):
                sub = sub[sub["unll_level"] == levels.mode().iloc[0]]
        _log_scale_if_wide(ax, sub["alpha"])
        fs = sorted(sub["f"].dropna().unique(), key=_f_sort_key)
        for i, f in enumerate(fs):
            line = sub[sub["f"] == f].sort_values("alpha")
            x = line["alpha"].to_numpy(dtype=float)
            if ax.get_xscale() == "log":
                # Small multiplicative dodge so equal win rates keep visible error bars.
                x = x * 10 ** (0.04 * (i - (len(fs) - 1) / 2))
            ax.errorbar(x, line["win_rate"], yerr=_yerr(line), label=str(f),
                        marker=F_MARKERS.get(f, "o"), capsize=2, elinewidth=0.8)
        if not dpo.empty:
            ax.axhline(dpo["win_rate"].iloc[0], color="0.15", ls="--", lw=0.9, label="DPO")
        ax.axhline(0.5, color="0.5", ls=":", lw=0.8)
        ax.set_title(loss)
        ax.set_xlabel(r"penalty strength $\alpha$")
    axes[0].set_ylabel("win rate vs SFT")
    fig.tight_layout()
    _legend_above(fig, axes, title="f(r)")
    return fig


PARADIGM_GROUPS = ("main", "chained", "3d_variants")


def fig_paradigms(win_rates: pd.DataFrame) -> Figure:
    """One horizontal bar per training paradigm (groups main, chained and the 3D-properties
    regularizers), with 95% CI, in table order from the top."""
    apply_style()
    agg = win_rates[win_rates["group"].isin(PARADIGM_GROUPS)]
    n = len(agg)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 0.8 + 0.2 * max(n, 2)))
    if n == 0:
        _note(ax, "no main or chained runs in this configuration")
        return fig
    # Labels get alpha when one label occurs at several alphas, so every bar is unambiguous.
    dup = agg["label"].duplicated(keep=False)
    names = [(label_with_alpha(r) if d else str(r["label"])) for (_, r), d in zip(agg.iterrows(), dup)]
    y = np.arange(n)[::-1]  # first table row at the top
    colors = [method_color(r["loss"], r["group"]) for _, r in agg.iterrows()]
    ax.barh(y, agg["win_rate"], xerr=_yerr(agg), color=colors, height=0.7,
            error_kw={"elinewidth": 0.8, "capsize": 2})
    for yi, value, hi in zip(y, agg["win_rate"], agg["win_rate_high"]):
        ax.text(min(max(hi, value) + 0.02, 1.0), yi, f"{value:.2f}", va="center", fontsize=7)
    ax.axvline(0.5, color="0.4", ls=":", lw=0.8)
    ax.set_yticks(y, names)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("win rate vs SFT (95% CI)")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def fig_reward_hist(scores: Mapping[str, pd.DataFrame], bins: int = 30) -> Figure:
    """Overlaid reward histograms (e.g. SFT, DPO, best DPPO) with each share of r < 0.

    ``scores`` maps a display label to a scores table (column ``reward``); empty or
    missing tables are skipped.
    """
    apply_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2))
    present = {k: v for k, v in scores.items() if v is not None and len(v)}
    if not present:
        _note(ax, "no score files to plot")
        return fig
    all_rewards = np.concatenate([v["reward"].to_numpy(dtype=float) for v in present.values()])
    edges = np.histogram_bin_edges(all_rewards, bins=bins)  # shared bins: comparable heights
    for i, (label, df) in enumerate(present.items()):
        rewards = df["reward"].to_numpy(dtype=float)
        neg = float((rewards < 0).mean())
        color = _hist_color(label, i)
        ax.hist(rewards, bins=edges, histtype="stepfilled", alpha=0.25, color=color)
        ax.hist(rewards, bins=edges, histtype="step", lw=1.2, color=color,
                label=f"{label} (r<0: {neg:.0%})")
    if edges[0] < 0 < edges[-1]:
        ax.axvline(0, color="0.3", ls=":", lw=0.8)
    ax.set_xlabel("reward")
    ax.set_ylabel("prompts")
    fig.tight_layout()
    _legend_above(fig, [ax], ncol=1)
    return fig


def _hist_color(label: str, index: int):
    """Colour by method name when the label starts with one (SFT, DPO, unll...)."""
    head = label.split()[0].lower().strip(",():") if label else ""
    return METHOD_COLORS.get(head, _PALETTE[index % len(_PALETTE)])


def fig_data_efficiency(win_rates: pd.DataFrame, n_full: int | None = None) -> Figure:
    """Win rate vs number of preference rows per method, plus the chained run as a star.

    Subset runs come from the data-efficiency group, the full-data point of each method
    from the main group (``n_full`` rows, see :func:`dppo.evaluate.claims.data_efficiency_rows`).
    """
    apply_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2))
    agg = data_efficiency_rows(win_rates, n_full)
    chained = win_rates[win_rates["group"] == "chained"]
    if agg.empty and chained.empty:
        _note(ax, "no data-efficiency runs in this configuration")
        return fig
    for method in agg["method"].unique():
        line = agg[agg["method"] == method]
        ax.errorbar(line["n_train"], line["win_rate"], yerr=_yerr(line),
                    label=str(line["label"].iloc[0]), marker="o", capsize=2, elinewidth=0.8,
                    color=method_color(line["loss"].iloc[0]))
    chained = chained.assign(n_train=pd.to_numeric(chained["n_train"], errors="coerce"))
    if n_full is not None:
        chained["n_train"] = chained["n_train"].fillna(n_full)
    for _, row in chained.dropna(subset=["n_train"]).iterrows():
        ax.errorbar([row["n_train"]], [row["win_rate"]], yerr=_yerr(row.to_frame().T.astype({"win_rate": float})),
                    marker="*", markersize=9, ls="none", capsize=2,
                    color=METHOD_COLORS["chained"], label=str(row["label"]))
    ax.axhline(0.5, color="0.5", ls=":", lw=0.8)
    sizes = sorted(set(pd.concat([agg["n_train"], chained["n_train"]]).dropna().astype(int)))
    _log_scale_if_wide(ax, sizes)
    ax.set_xticks(sizes, [str(n) for n in sizes])  # the sizes run, not crowded log labels
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("preference training rows")
    ax.set_ylabel("win rate vs SFT")
    fig.tight_layout()
    _legend_above(fig, [ax], ncol=1)
    return fig


def fig_differences(win_rates: pd.DataFrame) -> Figure:
    """Paired differences from the baseline (DPO), prompt by prompt on the same prompts: the
    win rate against SFT (left) and the share of negative rewards (right), one row per
    experiment with its interval; the dotted band is +-MDE of the win-rate difference."""
    apply_style()
    rows = win_rates[win_rates["name"] != win_rates["baseline"]].iloc[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 0.9 + 0.16 * max(len(rows), 2)), sharey=True)
    if rows.empty:
        _note(axes[0], "no experiment besides the baseline")
        return fig
    y = np.arange(len(rows))
    colors = [method_color(r["loss"], r["group"]) for _, r in rows.iterrows()]
    for ax, column, title in ((axes[0], "d_win_rate", "win rate vs SFT"),
                              (axes[1], "d_frac_negative", "share of negative rewards")):
        err = _yerr(rows, column)
        for yi, value, lo, hi, color in zip(y, rows[column], err[0], err[1], colors):
            ax.errorbar([value], [yi], xerr=[[lo], [hi]], fmt="o", color=color, capsize=2, elinewidth=0.8)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel(f"difference from {rows['baseline'].iloc[0]}: {title}")
    mde = rows["d_win_rate_mde"].median()
    axes[0].axvspan(-mde, mde, color="0.85", zorder=0, lw=0)
    n_seeds = rows["n_seeds"].astype(int).astype(str)
    axes[0].set_yticks(y, [f"{label_with_alpha(r)} ({k})" for (_, r), k in zip(rows.iterrows(), n_seeds)])
    for ax in axes:
        ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


DYNAMICS_SERIES = (("logp_chosen", r"$y_w$ (chosen)"), ("logp_rejected", r"$y_l$ (rejected)"),
                   ("logp_gen", r"$y_{gen}$"))


def smooth(values: pd.Series, window: int | None = None) -> pd.Series:
    """Centred rolling mean: per-step metrics are batch means and jump between batches."""
    if window is None:
        window = max(1, len(values) // 20) | 1  # odd, so "centred" does not shift the curve
    return values.rolling(window, center=True, min_periods=1).mean()


def fig_dynamics(metrics: Mapping[str, pd.DataFrame]) -> Figure:
    """Per run (columns): the log-probs of y_w, y_l and y_gen over training (top) and the loss
    with its DPO term (bottom), each the mean over the run's seeds per step.

    ``metrics`` maps a display label to the run's per-step metrics. The fixed probe rows
    (``probe_logp_chosen`` ...) are plotted where the run logged them: the same rows at every
    logged step, so the curves show the likelihoods moving. Otherwise the training batch means
    (``logp_chosen`` ...), smoothed with :func:`smooth`, which mix different rows per step.
    Null series (y_gen when a run does not track it) are left out.
    """
    apply_style()
    present = {k: v for k, v in metrics.items() if v is not None and len(v)}
    n = max(1, len(present))
    fig, axes = plt.subplots(2, n, figsize=(TEXT_WIDTH if n > 1 else COLUMN_WIDTH, 3.8), sharex="col",
                             squeeze=False)
    if not present:
        _note(axes[0, 0], "no training metrics to plot")
        return fig
    colors = {"logp_chosen": _PALETTE[2], "logp_rejected": _PALETTE[3], "logp_gen": _PALETTE[4]}
    probes = all("probe_logp_chosen" in df and df["probe_logp_chosen"].notna().any() for df in present.values())
    for col, (label, df) in enumerate(present.items()):
        top, bottom = axes[0, col], axes[1, col]
        for column, name in DYNAMICS_SERIES:
            source = f"probe_{column}" if probes else column
            if source not in df or df[source].isna().all():
                continue
            values = pd.to_numeric(df[source], errors="coerce").groupby(df["step"]).mean().dropna()
            top.plot(values.index, values if probes else smooth(values), label=name, color=colors[column])
        for column, name, style in (("loss", "loss", "-"), ("dpo", "DPO term", "--")):
            if column in df:
                values = pd.to_numeric(df[column], errors="coerce").groupby(df["step"]).mean()
                bottom.plot(values.index, smooth(values), style, color="0.2", label=name, lw=1.0)
        n_seeds = df["seed"].nunique() if "seed" in df else 1
        top.set_title(f"{label} ({n_seeds} seed{'s' if n_seeds > 1 else ''})")
        bottom.set_xlabel("optimizer step")
    axes[0, 0].set_ylabel(r"$\log \pi_\theta(y \mid x)$ " + ("(fixed rows)" if probes else "(batch mean)"))
    axes[1, 0].set_ylabel("training loss")
    fig.tight_layout()
    _legend_above(fig, list(axes[0]))
    axes[1, 0].legend(loc="upper right", frameon=False)
    return fig


def fig_length_dist(datasets: Mapping[str, tuple[Mapping, pd.Series | np.ndarray]]) -> Figure:
    """Token-length histograms of the training splits with the percentile cut-off.

    ``datasets`` maps a title (e.g. "SFT") to ``(stats, lengths)``: ``stats`` as in
    ``results/data/*/stats.json`` (``cutoff``, ``percentile``), ``lengths`` the token
    length of each train row before the cut.
    """
    apply_style()
    present = {k: v for k, v in datasets.items() if v is not None and len(v[1])}
    n = max(1, len(present))
    fig, axes = plt.subplots(1, n, figsize=(COLUMN_WIDTH, 1.8), squeeze=False)
    axes = axes[0]
    if not present:
        _note(axes[0], "no length statistics")
        return fig
    for ax, (title, (stats, lengths)) in zip(axes, present.items()):
        lengths = np.asarray(lengths, dtype=float)
        sns.histplot(lengths, bins=40, ax=ax, color=METHOD_COLORS["sft"], element="step",
                     edgecolor="0.3", linewidth=0.5)
        cutoff = stats.get("cutoff")
        if cutoff is not None:
            kept = float((lengths <= cutoff).mean())  # rows not truncated
            ax.axvline(cutoff, color=_PALETTE[3], ls="--", lw=1.0,
                       label=f"p{stats.get('percentile', 95):g} = {cutoff}")
            ax.legend(loc="upper right", frameon=True, handlelength=1.2)
            ax.set_title(f"{title} ({kept:.0%} ≤ cut)")
        else:
            ax.set_title(title)
        ax.set_xlabel("tokens")
        ax.set_ylabel("rows" if ax is axes[0] else "")
    fig.tight_layout()
    return fig
