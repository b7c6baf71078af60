"""The win-rate table's schema: its columns, and its rows built from the experiments and their
comparisons (one row per experiment). Its files: :mod:`dppo.report.result_files`; its LaTeX:
:mod:`dppo.report.table_latex`."""

from __future__ import annotations

import pandas as pd

EXPERIMENT_COLUMNS = ("name", "label", "group", "loss", "f", "alpha", "beta", "zeta", "unll_level", "n_train",
                      "seeds", "init")
INTEGER_COLUMNS = ("n_train", "n_seeds", "n_prompts", "n_wins", "n_ties", "n_losses", "n_changed")
# Read back as text, so that an empty cell is None rather than the string 'nan'.
TEXT_COLUMNS = ("label", "group", "loss", "f", "unll_level", "init", "baseline", "seeds")


def win_rate_table(experiments: list[dict], against_sft: pd.DataFrame, paired: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment of ``experiments`` (``results/experiments.json``), in that order:
    its settings, its comparison with SFT and its paired difference from the baseline."""
    settings = pd.DataFrame([{c: (" ".join(map(str, e[c])) if c == "seeds" else e.get(c)) for c in EXPERIMENT_COLUMNS}
                             for e in experiments])
    table = settings.merge(against_sft, on="name", how="left").merge(paired, on="name", how="left")
    # Nullable integers: an experiment without n_train must not turn 100 into "100.0".
    return table.astype({col: "Int64" for col in INTEGER_COLUMNS if col in table})
