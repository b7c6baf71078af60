"""Figures of the DPPO paper: one shared style and one function per figure.

Every function takes already-computed tables (win rates, scores, metrics, data stats),
never a model, so restyling a figure never retrains anything. Every function copes with
what a small run yields (one seed, empty groups, missing runs): it draws what exists and
writes a short note on the axes instead of crashing.

Every function returns a :class:`Plot`: the figure and the table of what it draws (one row per
bar, point, bin or step: :data:`DATA_COLUMNS`), built first and drawn from, so a test of the
table is a test of the figure. The rules write it beside the PDF (``<figure>.csv``).

Win-rate tables follow ``dppo.evaluate.winrate``: one row per experiment with columns ``name``,
``label``, ``group``, ``loss``, ``f``, ``alpha``, ``n_train``, ``n_seeds``, ``n_prompts``, ``win_rate``,
``win_rate_low``, ``win_rate_high``, ``frac_negative``, the paired differences ``d_*``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Which runs a figure shows is the paper's decision, shared with the macros: dppo.evaluate.run_selection.
from dppo.evaluate.run_selection import data_efficiency_rows, label_with_alpha, penalty_sweep_runs  # noqa: E402
from dppo.runtime.io import atomic_output_file, save_figure  # noqa: E402
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


# ---------------------------------------------------------------------------- drawn data

# One row per drawn mark. ``series``: its legend or tick label; ``run``: the experiment it shows
# ("" for data that is no run); ``low``/``high``: its interval on the value axis; the counts say
# how many prompts, seeds, answers or rows stand behind it (NaN where not applicable); the labels
# are those of its panel, as printed.
DATA_COLUMNS = ("panel", "series", "run", "x", "y", "low", "high", "n_prompts", "n_seeds", "n_answers", "n_rows",
                "panel_title", "x_label", "y_label")
COUNT_UNITS = {"n_prompts": "prompt", "n_seeds": "seed", "n_answers": "answer", "n_rows": "row"}


@dataclass
class Plot:
    """A figure and the table of what it draws (:data:`DATA_COLUMNS`)."""

    figure: Figure
    data: pd.DataFrame

    def save(self, pdf: str | Path, png: str | Path, csv: str | Path | None = None) -> None:
        """The figure as PDF and PNG and, with ``csv``, its data beside them; each atomically."""
        if csv is not None:
            with atomic_output_file(csv) as tmp:
                self.data.to_csv(tmp, index=False)
        save_figure(self.figure, pdf, png)


def drawn(rows: list[dict]) -> pd.DataFrame:
    """The data table of a figure from one dict per mark; missing columns are empty."""
    table = pd.DataFrame(rows, columns=list(DATA_COLUMNS))
    for column in ("panel", "series", "run", "panel_title", "x_label", "y_label"):
        table[column] = table[column].astype(object).fillna("").astype(str)
    return table


def count_text(n, unit: str) -> str:
    """'1 seed', '3 seeds', '2,400 answers'."""
    n = int(n)
    return f"{n:,} {unit}{'' if n == 1 else 's'}"


def counts_text(values, unit: str) -> str:
    """The distinct counts of a set of marks: '3 seeds', '1 or 3 seeds', '1, 2 or 3 seeds'."""
    distinct = sorted({int(v) for v in values if pd.notna(v)})
    if not distinct:
        return ""
    if len(distinct) == 1:
        return count_text(distinct[0], unit)
    head = ", ".join(f"{v:,}" for v in distinct[:-1])
    return f"{head} or {distinct[-1]:,} {unit}s"


def _counts(row) -> dict:
    """The prompt and seed counts of a win-rate row (NaN when the table lacks them)."""
    return {"n_prompts": row.get("n_prompts", np.nan), "n_seeds": row.get("n_seeds", np.nan)}


def _prompts_label(text: str, rows: pd.DataFrame, sep: str = " ") -> str:
    """An axis label with the prompts every mark rests on: 'win rate vs SFT (800 prompts)';
    ``sep`` "\\n" puts the count on a second line (long labels side by side)."""
    prompts = counts_text(rows["n_prompts"], "prompt") if "n_prompts" in rows else ""
    return f"{text}{sep}({prompts})" if prompts else text


# Settings that tell apart two runs of one label and alpha (e.g. the unlikelihood forms), each
# as the label prints it; a missing value is the setting's default.
_DISTINGUISHING = {
    "unll_level": lambda v: str(v).replace("_", " ") if pd.notna(v) else "sequence",
    "n_train": lambda v: f"{int(v)} rows" if pd.notna(v) else "all rows",
    "beta": lambda v: f"β={v:g}" if pd.notna(v) else "default β",
    "zeta": lambda v: f"ζ={v:g}" if pd.notna(v) else "default ζ",
    "init": lambda v: f"from {v}" if pd.notna(v) else "from sft",
}


def run_labels(rows: pd.DataFrame) -> list[str]:
    """One unique label per row: the run's label with alpha; where two rows still share one, the
    first setting that differs among them (unll_level, n_train ...) is added, then the next,
    until none is left; a label still shared then gets the run name."""
    frame = rows.reset_index(drop=True)
    labels = [label_with_alpha(r) for r in frame.to_dict("records")]
    for field, text in _DISTINGUISHING.items():
        if field not in frame:
            continue
        for label in {x for x in labels if labels.count(x) > 1}:
            index = [i for i, x in enumerate(labels) if x == label]
            if frame.loc[index, field].astype(str).nunique() > 1:
                for i in index:
                    labels[i] = f"{label}, {text(frame.loc[i, field])}"
    return [f"{x} [{n}]" if labels.count(x) > 1 else x for x, n in zip(labels, frame["name"])]


def _with_seeds(label: str, n_seeds) -> str:
    return f"{label} ({count_text(n_seeds, 'seed')})" if pd.notna(n_seeds) else label


# ---------------------------------------------------------------------------- figures


def _panel_row(n_panels: int):
    """One row of panels sharing the y axis: page-wide for several, a column for one."""
    n_panels = max(1, n_panels)
    fig, axes = plt.subplots(1, n_panels, figsize=(TEXT_WIDTH if n_panels > 1 else COLUMN_WIDTH, 2.1),
                             sharey=True, squeeze=False)
    return fig, axes[0]


def _empty(fig: Figure, ax, text: str) -> Plot:
    _note(ax, text)
    return Plot(fig, drawn([]))


def hparam_search_data(win_rates: pd.DataFrame) -> pd.DataFrame:
    """What :func:`fig_hparam_search` draws: per penalty loss (panel) and f (series) the win rate
    at each alpha, as run (no dodge), and the main-group DPO reference of every panel."""
    agg = penalty_sweep_runs(win_rates)
    dpo = win_rates[(win_rates["group"] == "main") & (win_rates["loss"] == "dpo")]
    y_label = _prompts_label("win rate vs SFT", pd.concat([agg, dpo]))
    rows = []
    for loss in [loss for loss in penalized_losses() if loss in set(agg["loss"])]:
        sub = agg[agg["loss"] == loss]
        if "unll_level" in sub:  # one line per f: the main unlikelihood form only
            levels = sub["unll_level"].dropna()
            if LOSS_KINDS[loss].token_levels and len(levels):
                sub = sub[sub["unll_level"] == levels.mode().iloc[0]]
        for f in sorted(sub["f"].dropna().unique(), key=_f_sort_key):
            line = sub[sub["f"] == f].sort_values("alpha")
            series = f"{f} ({counts_text(line['n_seeds'], 'seed')})" if "n_seeds" in line else str(f)
            rows += [{"panel": loss, "series": series, "run": r["name"], "x": float(r["alpha"]), "y": r["win_rate"],
                      "low": r["win_rate_low"], "high": r["win_rate_high"], **_counts(r)}
                     for r in line.to_dict("records")]
        for r in dpo.iloc[:1].to_dict("records"):
            rows.append({"panel": loss, "series": _with_seeds("DPO", r.get("n_seeds")), "run": r["name"],
                         "y": r["win_rate"], "low": r["win_rate_low"], "high": r["win_rate_high"], **_counts(r)})
    table = drawn(rows)
    return table.assign(panel_title=table["panel"], x_label=r"penalty strength $\alpha$", y_label=y_label)


def fig_hparam_search(win_rates: pd.DataFrame) -> Plot:
    """Win rate vs alpha: one panel per penalty loss, one line per f (poster's search).

    Rows of the alpha-sweep groups with a penalty loss (claims.penalty_sweep_runs); the main-group DPO
    win rate is the dashed reference line, 0.5 (parity with SFT) the dotted one. Points sit at
    their alpha: lines that coincide are told apart by marker and by hollow markers."""
    apply_style()
    data = hparam_search_data(win_rates)
    panels = list(dict.fromkeys(data["panel"]))
    fig, axes = _panel_row(len(panels))
    if not panels:
        return _empty(fig, axes[0], "no alpha-sweep runs in this configuration")
    for ax, panel in zip(axes, panels):
        sub = data[data["panel"] == panel]
        points = sub[sub["x"].notna()]
        _log_scale_if_wide(ax, points["x"])
        for series, line in points.groupby("series", sort=False):
            f = series.split(" (")[0]
            k = _f_sort_key(f)  # one colour, marker and fill per f in every panel
            ax.errorbar(line["x"], line["y"], yerr=_yerr(line.rename(columns={"y": "v", "low": "v_low",
                                                                             "high": "v_high"}), "v"),
                        label=series, marker=F_MARKERS.get(f, "o"), capsize=2, elinewidth=0.8, alpha=0.85,
                        color=_PALETTE[k % len(_PALETTE)], markerfacecolor="none" if k % 2 else None)
        for _, ref in sub[sub["x"].isna()].iterrows():
            ax.axhline(ref["y"], color="0.15", ls="--", lw=0.9, label=ref["series"])
        ax.axhline(0.5, color="0.5", ls=":", lw=0.8)
        ax.set_title(panel)
        ax.set_xlabel(sub["x_label"].iloc[0])
    axes[0].set_ylabel(data["y_label"].iloc[0])
    fig.tight_layout()
    _legend_above(fig, axes, title="f(r)")
    return Plot(fig, data)


def paradigms_data(win_rates: pd.DataFrame) -> pd.DataFrame:
    """What :func:`fig_paradigms` draws: one bar per experiment of the grid (every group: a claim
    may compare any two runs, the chained one with the best of all), in table order."""
    labels = run_labels(win_rates)
    rows = [{"panel": "", "series": _with_seeds(label, r.get("n_seeds")), "run": r["name"], "x": r["win_rate"],
             "y": float(i), "low": r["win_rate_low"], "high": r["win_rate_high"], **_counts(r)}
            for i, (label, r) in enumerate(zip(labels, win_rates.to_dict("records")))]
    return drawn(rows).assign(x_label=_prompts_label("win rate vs SFT, 95% CI", win_rates))


def fig_paradigms(win_rates: pd.DataFrame) -> Plot:
    """One horizontal bar per experiment, with 95% CI, in table order from the top, coloured by
    training paradigm (loss; the chained run its own)."""
    apply_style()
    data = paradigms_data(win_rates)
    n = len(data)
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 0.8 + 0.16 * max(n, 2)))
    if n == 0:
        return _empty(fig, ax, "no runs in this configuration")
    y = np.arange(n)[::-1]  # first table row at the top
    colors = [method_color(r["loss"], r["group"]) for _, r in win_rates.iterrows()]
    values = data.rename(columns={"x": "v", "low": "v_low", "high": "v_high"})
    ax.barh(y, data["x"], xerr=_yerr(values, "v"), color=colors, height=0.7,
            error_kw={"elinewidth": 0.8, "capsize": 2})
    for yi, value, hi in zip(y, data["x"], data["high"]):
        ax.text(min(max(hi, value) + 0.02, 1.0), yi, f"{value:.2f}", va="center", fontsize=7)
    ax.axvline(0.5, color="0.4", ls=":", lw=0.8)
    ax.set_yticks(y, data["series"])
    ax.set_xlim(0, 1.12)
    ax.set_xlabel(data["x_label"].iloc[0])
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return Plot(fig, data)


def _score_counts(df: pd.DataFrame) -> dict:
    """Answers, prompts and seeds behind a scores table."""
    return {"n_answers": len(df), "n_prompts": df["prompt_id"].nunique() if "prompt_id" in df else len(df),
            "n_seeds": df["seed"].nunique() if "seed" in df else np.nan}


def reward_hist_data(scores: Mapping[str, pd.DataFrame], runs: Mapping[str, str] | None = None,
                     bins: int = 30) -> pd.DataFrame:
    """What :func:`fig_reward_hist` draws: per model (series) the share of its answers in each
    reward bin (x: the bin's centre), on shared bins. Shares, not counts: the models have
    different numbers of answers (SFT one per prompt, a run one per prompt and seed)."""
    present = {k: v for k, v in scores.items() if v is not None and len(v)}
    if not present:
        return drawn([])
    edges = np.histogram_bin_edges(np.concatenate([v["reward"].to_numpy(dtype=float) for v in present.values()]),
                                   bins=bins)  # shared bins: comparable heights
    centres = (edges[:-1] + edges[1:]) / 2
    rows = []
    for label, df in present.items():
        rewards = df["reward"].to_numpy(dtype=float)
        counts = _score_counts(df)
        per = count_text(counts["n_prompts"], "prompt")
        if pd.notna(counts["n_seeds"]):  # a trained model: one answer per prompt and seed
            per += f" x {count_text(counts['n_seeds'], 'seed')}"
        series = (f"{label}: {count_text(counts['n_answers'], 'answer')} ({per}); "
                  f"reward < 0: {float((rewards < 0).mean()):.0%}")
        share = np.histogram(rewards, bins=edges)[0] / len(rewards)
        rows += [{"series": series, "run": (runs or {}).get(label, ""), "x": c, "y": s, **counts}
                 for c, s in zip(centres, share)]
    return drawn(rows).assign(x_label="reward", y_label="share of answers per bin")


def fig_reward_hist(scores: Mapping[str, pd.DataFrame], runs: Mapping[str, str] | None = None,
                    bins: int = 30) -> Plot:
    """Overlaid reward histograms (e.g. SFT, DPO, best DPPO) with each share of negative rewards.

    ``scores`` maps a display label to a scores table (``reward``, and ``prompt_id``, ``seed``
    where known); empty or missing tables are skipped. ``runs`` maps a label to its experiment."""
    apply_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2))
    data = reward_hist_data(scores, runs, bins)
    if data.empty:
        return _empty(fig, ax, "no score files to plot")
    width = float(np.diff(np.sort(data["x"].unique()))[:1].sum()) or 1.0
    for i, (series, sub) in enumerate(data.groupby("series", sort=False)):
        color = _hist_color(series, i)
        ax.bar(sub["x"], sub["y"], width=width, color=color, alpha=0.25, lw=0)
        ax.step(sub["x"], sub["y"], where="mid", lw=1.2, color=color, label=series)
    if data["x"].min() < 0 < data["x"].max():
        ax.axvline(0, color="0.3", ls=":", lw=0.8)
    ax.set_xlabel(data["x_label"].iloc[0])
    ax.set_ylabel(data["y_label"].iloc[0])
    fig.tight_layout()
    _legend_above(fig, [ax], ncol=1)
    return Plot(fig, data)


def _hist_color(label: str, index: int):
    """Colour by method name when the label starts with one (SFT, DPO, unll...)."""
    head = label.split()[0].lower().strip(",():") if label else ""
    return METHOD_COLORS.get(head, _PALETTE[index % len(_PALETTE)])


def data_efficiency_data(win_rates: pd.DataFrame, n_full: int | None = None) -> pd.DataFrame:
    """What :func:`fig_data_efficiency` draws: per method the win rate at each training-set size
    (:func:`dppo.evaluate.run_selection.data_efficiency_rows`), and the chained run (series "chained")
    at the row count of its last stage."""
    agg = data_efficiency_rows(win_rates, n_full)
    if len(agg):  # the counts of the run behind each point
        agg = agg.merge(win_rates[["name", "n_seeds", "n_prompts"]], on="name", how="left")
    rows = []
    for method in agg["method"].unique() if len(agg) else []:
        line = agg[agg["method"] == method]
        series = f"{line['label'].iloc[0]} ({counts_text(line['n_seeds'], 'seed')})"
        rows += [{"series": series, "run": r["name"], "x": r["n_train"], "y": r["win_rate"], "low": r["win_rate_low"],
                  "high": r["win_rate_high"], "marker": "line", **_counts(r)} for r in line.to_dict("records")]
    chained = win_rates[win_rates["group"] == "chained"]
    chained = chained.assign(n_train=pd.to_numeric(chained["n_train"], errors="coerce"))
    if n_full is not None:
        chained["n_train"] = chained["n_train"].fillna(n_full)
    for r in chained.dropna(subset=["n_train"]).to_dict("records"):
        rows.append({"series": _with_seeds(str(r["label"]), r.get("n_seeds")), "run": r["name"], "x": r["n_train"],
                     "y": r["win_rate"], "low": r["win_rate_low"], "high": r["win_rate_high"], "marker": "star",
                     **_counts(r)})
    table = drawn(rows)
    table["marker"] = [r["marker"] for r in rows]
    used = win_rates[win_rates["name"].isin(table["run"])]
    return table.assign(x_label="preference training rows", y_label=_prompts_label("win rate vs SFT", used))


def fig_data_efficiency(win_rates: pd.DataFrame, n_full: int | None = None) -> Plot:
    """Win rate vs number of preference rows per method, plus the chained run as a star.

    Subset runs come from the data-efficiency group, the full-data point of each method
    from the main group (``n_full`` rows, see :func:`dppo.evaluate.run_selection.data_efficiency_rows`).
    """
    apply_style()
    fig, ax = plt.subplots(figsize=(COLUMN_WIDTH, 2.2))
    data = data_efficiency_data(win_rates, n_full)
    if data.empty:
        return _empty(fig, ax, "no data-efficiency runs in this configuration")
    values = data.rename(columns={"y": "v", "low": "v_low", "high": "v_high"})
    for series, line in values.groupby("series", sort=False):
        star = line["marker"].iloc[0] == "star"
        run = win_rates[win_rates["name"] == line["run"].iloc[0]].iloc[0]
        color = METHOD_COLORS["chained"] if star else method_color(run["loss"])
        ax.errorbar(line["x"], line["v"], yerr=_yerr(line, "v"), label=series, marker="*" if star else "o",
                    markersize=9 if star else None, ls="none" if star else "-", capsize=2, elinewidth=0.8,
                    color=color)
    ax.axhline(0.5, color="0.5", ls=":", lw=0.8)
    sizes = sorted(set(data["x"].dropna().astype(int)))
    _log_scale_if_wide(ax, sizes)
    ax.set_xticks(sizes, [str(n) for n in sizes])  # the sizes run, not crowded log labels
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(data["x_label"].iloc[0])
    ax.set_ylabel(data["y_label"].iloc[0])
    fig.tight_layout()
    _legend_above(fig, [ax], ncol=1)
    return Plot(fig, data)


DIFFERENCE_PANELS = (("d_win_rate", "win rate vs SFT"), ("d_frac_negative", "share of negative rewards"))


def differences_data(win_rates: pd.DataFrame) -> pd.DataFrame:
    """What :func:`fig_differences` draws: per experiment but the baseline (series, unique
    labels with seeds) its paired difference from the baseline in each metric (panel)."""
    rows = win_rates[win_rates["name"] != win_rates["baseline"]]
    labels = [_with_seeds(label, r.get("n_seeds")) for label, r in zip(run_labels(rows), rows.to_dict("records"))]
    out = []
    for column, title in DIFFERENCE_PANELS:
        x_label = _prompts_label(f"difference from {rows['baseline'].iloc[0]}: {title}", rows, "\n") if len(rows) else ""
        out += [{"panel": column, "series": label, "run": r["name"], "x": r[column], "y": float(i),
                 "low": r[f"{column}_low"], "high": r[f"{column}_high"], "x_label": x_label, **_counts(r)}
                for i, (label, r) in enumerate(zip(labels, rows.to_dict("records")))]
    return drawn(out)


def fig_differences(win_rates: pd.DataFrame) -> Plot:
    """Paired differences from the baseline (DPO), prompt by prompt on the same prompts: the
    win rate against SFT (left) and the share of negative rewards (right), one row per
    experiment with its interval; the grey band is +-MDE of the win-rate difference (median)."""
    apply_style()
    data = differences_data(win_rates)
    n = len(data) // len(DIFFERENCE_PANELS)
    fig, axes = plt.subplots(1, 2, figsize=(TEXT_WIDTH, 0.9 + 0.16 * max(n, 2)), sharey=True)
    if data.empty:
        return _empty(fig, axes[0], "no experiment besides the baseline")
    rows = win_rates[win_rates["name"] != win_rates["baseline"]]
    colors = [method_color(r["loss"], r["group"]) for _, r in rows.iterrows()]
    for ax, (panel, _) in zip(axes, DIFFERENCE_PANELS):
        sub = data[data["panel"] == panel].rename(columns={"x": "v", "low": "v_low", "high": "v_high"})
        y = n - 1 - sub["y"].to_numpy()  # first table row at the top
        err = _yerr(sub, "v")
        for yi, value, lo, hi, color in zip(y, sub["v"], err[0], err[1], colors):
            ax.errorbar([value], [yi], xerr=[[lo], [hi]], fmt="o", color=color, capsize=2, elinewidth=0.8)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.set_xlabel(sub["x_label"].iloc[0])
        ax.grid(axis="y", visible=False)
    mde = rows["d_win_rate_mde"].median()
    axes[0].axvspan(-mde, mde, color="0.85", zorder=0, lw=0)
    first = data[data["panel"] == DIFFERENCE_PANELS[0][0]]
    axes[0].set_yticks(n - 1 - first["y"].to_numpy(), first["series"])
    fig.tight_layout()
    return Plot(fig, data)


DYNAMICS_SERIES = (("logp_chosen", r"$y_w$ (chosen)"), ("logp_rejected", r"$y_l$ (rejected)"),
                   ("logp_gen", r"$y_{gen}$"))


def smooth(values: pd.Series, window: int | None = None) -> pd.Series:
    """Centred rolling mean: per-step metrics are batch means and jump between batches."""
    if window is None:
        window = max(1, len(values) // 20) | 1  # odd, so "centred" does not shift the curve
    return values.rolling(window, center=True, min_periods=1).mean()


def _per_step(df: pd.DataFrame, column: str) -> pd.Series:
    """The mean over seeds per step of one metric, steps without a value dropped."""
    if column not in df:
        return pd.Series(dtype=float)
    return pd.to_numeric(df[column], errors="coerce").groupby(df["step"]).mean().dropna()


def dynamics_data(metrics: Mapping[str, pd.DataFrame], runs: Mapping[str, str] | None = None) -> pd.DataFrame:
    """What :func:`fig_dynamics` draws. The first run of ``metrics`` is the baseline (DPO):

    - panel ``logp``: its log-probs of y_w, y_l and y_gen over training;
    - panel ``delta``: every other run's log-probs minus the baseline's, step by step (the same
      fixed probe rows and seeds in every run), so a penalty's effect shows at its own scale;
    - panel ``loss``: each run's training loss and its DPO term; panel ``fired``: the share of
      batch rows whose trigger fires (r < 0), where a penalty acts at all.

    The fixed probe rows (``probe_logp_chosen`` ...) are used where every run logged them,
    else the training batch means (``logp_chosen`` ...), smoothed with :func:`smooth`. Null
    series (y_gen when a run does not track it) are left out."""
    present = {k: v for k, v in metrics.items() if v is not None and len(v)}
    if not present:
        return drawn([])
    probes = all("probe_logp_chosen" in df and df["probe_logp_chosen"].notna().any() for df in present.values())
    rows_word = "fixed probe rows" if probes else "batch means, smoothed"
    seeds = {label: (df["seed"].nunique() if "seed" in df else 1) for label, df in present.items()}

    def logp(df, column):
        values = _per_step(df, f"probe_{column}" if probes else column)
        return values if probes else smooth(values)

    def rows_of(panel, label, values, title, y_label):
        return [{"panel": panel, "series": _with_seeds(label, seeds[label]), "run": (runs or {}).get(label, ""),
                 "x": float(step), "y": float(v), "n_seeds": seeds[label], "panel_title": title,
                 "x_label": "optimizer step", "y_label": y_label} for step, v in values.items()]

    (base_label, base), *others = present.items()
    out = []
    for column, name in DYNAMICS_SERIES:
        values = logp(base, column)
        out += [{**r, "series": f"{name}, {r['series']}"} for r in
                rows_of("logp", base_label, values, f"{base_label}: log-probs ({rows_word})",
                        r"$\log \pi_\theta(y \mid x)$")]
        for label, df in others:
            delta = (logp(df, column) - values).dropna()
            out += [{**r, "series": f"{name}, {r['series']}"} for r in
                    rows_of("delta", label, delta, f"minus {base_label}, same rows and seeds ({rows_word})",
                            r"$\Delta \log \pi_\theta(y \mid x)$")]
    for label, df in present.items():
        for column, name in (("loss", "loss"), ("dpo", "DPO term")):
            out += [{**r, "series": f"{name}, {r['series']}"} for r in
                    rows_of("loss", label, smooth(_per_step(df, column)), "training loss (rolling mean)", "loss")]
        out += rows_of("fired", label, smooth(_per_step(df, "frac_r_neg")), "rows where the trigger fires",
                       "share of batch rows with r < 0")
    return drawn(out)


DYNAMICS_PANELS = ("logp", "delta", "loss", "fired")


def fig_dynamics(metrics: Mapping[str, pd.DataFrame], runs: Mapping[str, str] | None = None) -> Plot:
    """2 x 2 panels (:func:`dynamics_data`): the baseline's log-probs of y_w, y_l and y_gen, each
    other run's difference from them, the training losses and the share of rows the trigger
    fires on. ``metrics`` maps a display label to the run's per-step metrics, the baseline first;
    ``runs`` a label to its experiment."""
    apply_style()
    data = dynamics_data(metrics, runs)
    fig, axes = plt.subplots(2, 2, figsize=(TEXT_WIDTH, 4.0), sharex=True)
    if data.empty:
        return _empty(fig, axes[0, 0], "no training metrics to plot")
    colors = {name: _PALETTE[c] for (_, name), c in zip(DYNAMICS_SERIES, (2, 3, 4))}
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes.flat, DYNAMICS_PANELS):
        sub = data[data["panel"] == panel]
        if sub.empty:
            _note(ax, "no run besides the baseline" if panel == "delta" else "not logged")
            continue
        for i, (series, line) in enumerate(sub.groupby("series", sort=False)):
            head = series.split(", ")[0]
            ax.plot(line["x"], line["y"], styles[i % len(styles)] if head not in colors else "-",
                    color=colors.get(head, "0.2" if i % 2 == 0 else "0.55"), label=series, lw=1.0)
        if panel == "delta":
            ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(sub["panel_title"].iloc[0])
        ax.set_ylabel(sub["y_label"].iloc[0])
        ax.legend(loc="best", frameon=False, fontsize=6)
    for ax in axes[1]:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    return Plot(fig, data)


def length_dist_data(datasets: Mapping[str, tuple[Mapping, pd.Series | np.ndarray]], bins: int = 40) -> pd.DataFrame:
    """What :func:`fig_length_dist` draws: per training split (panel) the rows per token-length
    bin (x: the bin's centre) and the cut-off (series "cut-off", x the cut, y the share kept)."""
    rows = []
    for title, (stats, lengths) in datasets.items():
        lengths = np.asarray(lengths, dtype=float)
        if not len(lengths):
            continue
        counts, edges = np.histogram(lengths, bins=bins)
        n = len(lengths)
        cutoff = stats.get("cutoff")
        kept = float((lengths <= cutoff).mean()) if cutoff is not None else np.nan  # rows not truncated
        panel_title = f"{title}: {count_text(n, 'row')}" + (f", {kept:.0%} <= cut" if cutoff is not None else "")
        common = {"panel": title, "n_rows": n, "panel_title": panel_title, "x_label": "tokens",
                  "y_label": "rows per bin"}
        rows += [{**common, "series": "rows", "x": (lo + hi) / 2, "y": c} for lo, hi, c in zip(edges, edges[1:], counts)]
        if cutoff is not None:
            rows.append({**common, "series": f"p{stats.get('percentile', 95):g} = {cutoff}", "x": float(cutoff),
                         "y": kept})
    return drawn(rows)


def fig_length_dist(datasets: Mapping[str, tuple[Mapping, pd.Series | np.ndarray]]) -> Plot:
    """Token-length histograms of the training splits with the percentile cut-off.

    ``datasets`` maps a title (e.g. "SFT") to ``(stats, lengths)``: ``stats`` as in
    ``results/data/*/stats.json`` (``cutoff``, ``percentile``), ``lengths`` the token
    length of each train row before the cut.
    """
    apply_style()
    data = length_dist_data(datasets)
    panels = list(dict.fromkeys(data["panel"]))
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(COLUMN_WIDTH, 1.8), squeeze=False)
    axes = axes[0]
    if not panels:
        return _empty(fig, axes[0], "no length statistics")
    for ax, panel in zip(axes, panels):
        sub = data[data["panel"] == panel]
        bars = sub[sub["series"] == "rows"]
        width = float(np.diff(bars["x"].to_numpy())[:1].sum()) or 1.0
        ax.bar(bars["x"], bars["y"], width=width, color=METHOD_COLORS["sft"], edgecolor="0.3", linewidth=0.5)
        for _, cut in sub[sub["series"] != "rows"].iterrows():
            ax.axvline(cut["x"], color=_PALETTE[3], ls="--", lw=1.0, label=cut["series"])
            ax.legend(loc="upper right", frameon=True, handlelength=1.2)
        ax.set_title(sub["panel_title"].iloc[0])
        ax.set_xlabel(sub["x_label"].iloc[0])
        ax.set_ylabel(sub["y_label"].iloc[0] if ax is axes[0] else "")
    fig.tight_layout()
    return Plot(fig, data)


def ygen_drift_data(drift: pd.DataFrame) -> pd.DataFrame:
    """What :func:`fig_ygen_drift` draws, from ``results/tables/ygen_drift.csv``
    (:func:`dppo.train.rounds.drift_table`): per on-policy experiment and seed (a series), at each
    round k >= 2, the share of training prompts whose regenerated y_gen differs from round k-1's
    (left) and the policy's mean log-prob of the old and the new y_gen (right)."""
    rows = []
    for (experiment, seed), part in drift.groupby(["experiment", "seed"], sort=True):
        part = part.sort_values("round")
        for r in part.to_dict("records"):
            n = int(r["prompts"])
            common = {"run": experiment, "n_rows": n, "x": r["round"], "x_label": "round"}
            rows.append({**common, "panel": "changed", "series": f"{experiment}, seed {seed}", "y": r["changed_share"],
                         "panel_title": "y_gen changed", "y_label": f"share of {n:,} training rows"})
            for which in ("old", "new"):
                rows.append({**common, "panel": "logp", "series": f"{experiment}, seed {seed}: {which} y_gen",
                             "y": r[f"logp_{which}_mean"], "panel_title": "policy log-prob",
                             "y_label": f"mean log-prob over {n:,} training rows"})
    return drawn(rows)


def fig_ygen_drift(drift: pd.DataFrame) -> Plot:
    """How far on-policy y_gen moved from round to round (:func:`ygen_drift_data`)."""
    apply_style()
    data = ygen_drift_data(drift)
    fig, axes = plt.subplots(1, 2, figsize=(2 * COLUMN_WIDTH, 2.2))
    if data.empty:
        return _empty(fig, axes[0], "no experiment trains in rounds")
    for ax, panel in zip(axes, ("changed", "logp")):
        part = data[data["panel"] == panel]
        for series, line in part.groupby("series", sort=False):
            ax.plot(line["x"], line["y"], marker="o", ls="--" if series.endswith("old y_gen") else "-", label=series)
        ax.set_title(part["panel_title"].iloc[0])
        ax.set_xlabel("round (y_gen regenerated by the previous round's policy)")
        ax.set_ylabel(part["y_label"].iloc[0])
        ax.set_xticks(sorted(set(part["x"])))
        ax.legend(fontsize=6)
    return Plot(fig, data)
