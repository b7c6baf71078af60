"""The preference training rows: the prepared pairs joined with y_gen and the reference
log-probs, in row order, and the nested subsets that ``n_train`` takes."""

from __future__ import annotations

import numpy as np
import pandas as pd

REF_COLUMNS = ("ref_chosen", "ref_rejected", "ref_gen")


def ids(values) -> list[int]:
    return [int(v) for v in values]


def subset_indices(n_rows: int, n_train: int | None, seed: int) -> np.ndarray:
    """The first ``n_train`` rows of one fixed permutation: smaller subsets are nested in
    larger ones, so a data-efficiency sweep only adds rows."""
    if n_train is None:
        n_train = n_rows
    if not 0 < n_train <= n_rows:
        raise ValueError(f"n_train={n_train} but the preference training split has {n_rows} rows")
    return np.sort(np.random.default_rng(seed).permutation(n_rows)[:n_train])


def load_training_rows(pref_file, ygen_file, ref_file) -> pd.DataFrame:
    """Prepared preference rows joined with y_gen and the reference log-probs (row order)."""
    rows = pd.read_parquet(pref_file)
    ygen = pd.read_parquet(ygen_file)
    ref = pd.read_parquet(ref_file)
    for name, other in (("y_gen", ygen), ("reference log-probs", ref)):
        if len(other) != len(rows) or not (other["prompt_id"].to_numpy() == rows["prompt_id"].to_numpy()).all():
            raise ValueError(f"the {name} file does not match the preference rows; rerun its rule")
    rows["gen_ids"] = ygen["gen_ids"]
    rows["gen"] = ygen["gen"]
    for column in REF_COLUMNS:
        rows[column] = ref[column]
    return rows


def with_penalized_response(rows: pd.DataFrame, source: str) -> pd.DataFrame:
    """The rows with the response the DPPO penalties push down in its y_gen columns: y_gen itself,
    or (``rejected``, a control of what y_gen adds) the rejected answer and its reference log-prob."""
    if source == "ygen":
        return rows
    if source != "rejected":
        raise ValueError(f"unknown penalized response {source!r}")
    return rows.assign(gen_ids=rows["rejected_ids"], gen=rows["rejected"], ref_gen=rows["ref_rejected"])


def preference_records(rows) -> list[dict]:
    """Training rows as plain int lists and float reference log-probs (mappings with the
    columns of :func:`load_training_rows`)."""
    return [
        {
            **{key: ids(r[key]) for key in ("prompt_ids", "chosen_ids", "rejected_ids", "gen_ids")},
            **{column: float(r[column]) for column in REF_COLUMNS},
        }
        for r in rows
    ]
