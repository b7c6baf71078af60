"""Comparisons of two training methods over replicated pipelines: intervals that include every
source of variation that was replicated, not only the held-out prompts.

Design. The pipeline runs K *worlds* (each redraws the synthetic data, the SFT model, y_gen and
the reference log-probs), S training *seeds* per experiment in each world (seed position s is the
same data order for every experiment of the world) and evaluates every trained model on the same
P held-out *prompts* of its world. Per (world, seed, prompt) an experiment has one value (a win
score against the SFT answer, or a reward). Within a world, seeds and prompts are crossed (every
seed's model answers every prompt), so the random-effects model of a paired difference A - B is

    d[w, s, p] = mu + world[w] + seed[w, s] + prompt[w, p] + seed_x_prompt[w, s, p]

with independent zero-mean effects of variances var_world, var_seed, var_prompt, var_seed_x_prompt
(the nested "prompts within seeds" variance is var_prompt + var_seed_x_prompt). Worlds are
independent draws, so the K world means are i.i.d. with mean mu whatever the lower-level variances
are: the t interval over world means (K - 1 df) is the exact interval for mu in this balanced design.
With one world (K == 1) the interval can only be conditional on that world (its data, its SFT
model, its prompts); with one seed too it is conditional on that seed as well. Every interval is
conditional on the machine's arithmetic unless the worlds ran on several machines.

Inputs are long tables with columns ``world, experiment, seed, prompt_id, value`` (optionally
``machine``). :func:`paired_differences` turns two experiments into a table of differences
``world, seed, seed_a, seed_b, prompt_id, diff`` (``seed`` is the seed *position* in the world);
every other function takes such a table, or the same numbers as an array of shape (K, S, P), with
any leading batch axes for simulations. Quantiles of Student's t are computed here (no scipy) from
the regularised incomplete beta function. Imports neither torch nor transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd

HOLDS, REFUTED, INCONCLUSIVE = "holds", "refuted", "inconclusive"
LEVELS = ("world", "seed", "prompt", "seed_x_prompt")  # the variance components, top to bottom
POWER = 0.8  # the power the minimum detectable difference (MDE) is computed for
KEY = ["world", "seed", "prompt_id"]


# ----------------------------------------------------------------------------- Student's t


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b): the continued fraction of Numerical Recipes
    (modified Lentz), on the side of x where it converges fast."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.lgamma(a) - math.lgamma(b) + math.lgamma(a + b)
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return math.exp(log_front) * fraction / a


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (normal when df is infinite)."""
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@lru_cache(maxsize=4096)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` > 0 degrees of freedom, by bisection of
    :func:`t_cdf` to float precision."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t quantile needs 0 < p < 1, got {p}")
    if not df > 0:
        raise ValueError(f"t quantile needs df > 0, got {df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    high = 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    low = 0.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        if middle in (low, high):
            break
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
    return 0.5 * (low + high)


# ----------------------------------------------------------------------------- pairing


def _show(value) -> str:
    """repr of a key for an error message, numpy scalars shown as Python ones."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _check_columns(table: pd.DataFrame, needed: Iterable[str], what: str) -> None:
    missing = sorted(set(needed) - set(table.columns))
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}")


def paired_differences(values: pd.DataFrame, a: str, b: str, column: str = "value") -> pd.DataFrame:
    """Per (world, seed, prompt) the difference A - B of ``column``.

    Seeds are paired by their *position* within the world (the k-th smallest seed of A with the
    k-th smallest of B). When A and B ran the same seeds (the design: the same seed is the same
    data order) that is pairing by seed id; when they ran different seeds (a twin with other
    seeds, for an A/A check) the pairs are arbitrary but independent, which keeps the seed-level
    interval (K == 1) valid, and it never changes the estimate or the world-level interval (both
    depend only on each world's means). Averaging seeds first would lose the seed level.

    Returns ``world, seed, seed_a, seed_b, prompt_id, diff`` (``seed`` is the position 0..S-1),
    plus ``machine`` (the machines of the world's rows, joined by "+") when ``values`` has that
    column. Raises ValueError, naming what is missing, on an unpaired or unbalanced design."""
    _check_columns(values, ["world", "experiment", "seed", "prompt_id", column], "values")
    if a == b:
        raise ValueError(f"cannot pair experiment {a!r} with itself")
    rows = values[values["experiment"].isin([a, b])]
    for name in (a, b):
        if not rows["experiment"].eq(name).any():
            raise ValueError(f"no rows for experiment {name!r}")
    if rows[column].isna().any():
        first = rows.loc[rows[column].isna()].iloc[0]
        raise ValueError(f"missing {column} for experiment {_show(first['experiment'])}, "
                         f"world {_show(first['world'])}, seed {_show(first['seed'])}, "
                         f"prompt_id {_show(first['prompt_id'])}")
    repeated = rows.duplicated(["experiment", *KEY])
    if repeated.any():
        first = rows.loc[repeated].iloc[0]
        raise ValueError(f"experiment {_show(first['experiment'])} repeats world {_show(first['world'])}, "
                         f"seed {_show(first['seed'])}, prompt_id {_show(first['prompt_id'])}")
    sides = {name: rows[rows["experiment"] == name] for name in (a, b)}
    worlds = {name: set(side["world"].unique().tolist()) for name, side in sides.items()}
    for name, other in ((a, b), (b, a)):
        lacking = sorted(worlds[other] - worlds[name])
        if lacking:
            raise ValueError(f"world(s) {lacking} missing for experiment {name!r}")
    seeds = {name: side.groupby("world")["seed"].unique().map(lambda s: sorted(s.tolist()))
             for name, side in sides.items()}
    for world in sorted(worlds[a]):
        if len(seeds[a][world]) != len(seeds[b][world]):
            raise ValueError(f"world {_show(world)}: experiment {a!r} has seeds {seeds[a][world]}, {b!r} has "
                             f"{seeds[b][world]}; seeds are paired by position, so the counts must match")
    paired = []
    for name, side in sides.items():
        position = side.groupby("world")["seed"].rank(method="dense").astype(int) - 1
        paired.append(side.assign(position=position))
    merged = paired[0].merge(paired[1], on=["world", "position", "prompt_id"], how="outer", suffixes=("_a", "_b"),
                             indicator=True)
    unpaired = merged[merged["_merge"] != "both"]
    if len(unpaired):
        first = unpaired.iloc[0]
        has, lacks = (a, b) if first["_merge"] == "left_only" else (b, a)
        seed = first["seed_a"] if has == a else first["seed_b"]
        raise ValueError(f"prompt_id {_show(first['prompt_id'])} of world {_show(first['world'])}, "
                         f"seed {_show(seed)} of {has!r} is missing for experiment {lacks!r} "
                         f"(seed position {_show(first['position'])})")
    diffs = pd.DataFrame({"world": merged["world"], "seed": merged["position"], "seed_a": merged["seed_a"],
                          "seed_b": merged["seed_b"], "prompt_id": merged["prompt_id"],
                          "diff": merged[f"{column}_a"].to_numpy(float) - merged[f"{column}_b"].to_numpy(float)})
    if "machine" in rows.columns:
        machines = rows.groupby("world")["machine"].agg(lambda m: "+".join(sorted(map(str, set(m)))))
        diffs["machine"] = diffs["world"].map(machines)
    diffs = diffs.sort_values(KEY, kind="stable").reset_index(drop=True)
    _cube(diffs)  # refuse an unbalanced design here, where the caller still knows the experiments
    return diffs


def _cube(diffs: pd.DataFrame) -> tuple[np.ndarray, list, list[np.ndarray]]:
    """The differences as an array (K worlds, S seeds, P prompts), the world ids and each world's
    prompt ids (sorted). Every world must have the same number of seeds and of prompts, and every
    seed of a world the same prompts."""
    _check_columns(diffs, [*KEY, "diff"], "differences")
    if diffs.empty:
        raise ValueError("no differences given")
    if diffs["diff"].isna().any():
        first = diffs.loc[diffs["diff"].isna()].iloc[0]
        raise ValueError(f"missing diff for world {_show(first['world'])}, seed {_show(first['seed'])}, "
                         f"prompt_id {_show(first['prompt_id'])}")
    repeated = diffs.duplicated(KEY)
    if repeated.any():
        first = diffs.loc[repeated].iloc[0]
        raise ValueError(f"differences repeat world {_show(first['world'])}, seed {_show(first['seed'])}, "
                         f"prompt_id {_show(first['prompt_id'])}")
    worlds, blocks, prompts = sorted(diffs["world"].unique().tolist()), [], []
    for world in worlds:
        block = diffs[diffs["world"] == world].pivot(index="seed", columns="prompt_id", values="diff").sort_index()
        holes = np.argwhere(block.isna().to_numpy())
        if len(holes):
            seed, prompt = block.index[holes[0][0]], block.columns[holes[0][1]]
            raise ValueError(f"prompt_id {_show(prompt)} is missing for world {_show(world)}, seed {_show(seed)} "
                             f"(every seed of a world must answer the same prompts)")
        if blocks and block.shape != blocks[0].shape:
            raise ValueError(f"unbalanced design: world {_show(world)} has {block.shape[0]} seed(s) x {block.shape[1]} "
                             f"prompt(s), world {_show(worlds[0])} has {blocks[0].shape[0]} x {blocks[0].shape[1]}")
        blocks.append(block.to_numpy(float))
        prompts.append(block.columns.to_numpy())
    if blocks[0].shape[1] < 2:
        raise ValueError("at least two prompts per world are needed")
    return np.stack(blocks), worlds, prompts


def _as_cube(diffs) -> np.ndarray:
    if isinstance(diffs, pd.DataFrame):
        return _cube(diffs)[0]
    cube = np.asarray(diffs, dtype=float)
    if cube.ndim < 3:
        raise ValueError(f"an array of differences needs shape (..., worlds, seeds, prompts), got {cube.shape}")
    if cube.shape[-1] < 2:
        raise ValueError("at least two prompts per world are needed")
    return cube


def _plain(x):
    """A float for a 0-d result, the array otherwise (batched simulations)."""
    x = np.asarray(x, dtype=float)
    return float(x) if x.ndim == 0 else x


# ----------------------------------------------------------------------------- variance components


def _mean_squares(cube: np.ndarray) -> dict[str, np.ndarray]:
    """ANOVA mean squares of the balanced design world > (seed x prompt); NaN where a level has
    one unit."""
    n_worlds, n_seeds, n_prompts = cube.shape[-3:]
    world_means = cube.mean(axis=(-2, -1))
    seed_means = cube.mean(axis=-1)
    prompt_means = cube.mean(axis=-2)
    grand = world_means.mean(axis=-1)
    nan = np.full(grand.shape, np.nan)
    ms = {"world": nan, "seed": nan, "seed_x_prompt": nan}
    if n_worlds > 1:
        ms["world"] = n_seeds * n_prompts * ((world_means - grand[..., None]) ** 2).sum(-1) / (n_worlds - 1)
    ms["prompt"] = n_seeds * ((prompt_means - world_means[..., None]) ** 2).sum((-2, -1)) / (n_worlds * (n_prompts - 1))
    if n_seeds > 1:
        ms["seed"] = n_prompts * ((seed_means - world_means[..., None]) ** 2).sum((-2, -1)) / (n_worlds * (n_seeds - 1))
        residual = cube - seed_means[..., None] - prompt_means[..., None, :] + world_means[..., None, None]
        ms["seed_x_prompt"] = (residual ** 2).sum((-3, -2, -1)) / (n_worlds * (n_seeds - 1) * (n_prompts - 1))
    return ms


def variance_components(diffs) -> dict:
    """Method-of-moments (ANOVA) variance components of the differences, each clipped at 0.

    ``variance``: the variance of the world effects, of the seed effects within a world, of the
    prompt effects within a world (shared by its seeds) and of the seed x prompt residual; the
    nested "prompts within seeds" variance is prompt + seed_x_prompt. A level with one unit cannot
    be separated from the level above it: with one seed, ``prompt`` holds prompt + seed_x_prompt
    and ``world`` includes the seed variance (``seed`` and ``seed_x_prompt`` are NaN); with one
    world, ``world`` is NaN. ``share``: each level's part of the variance of the grand mean
    (var/K, var/(K S), var/(K P), var/(K S P)), over the levels that could be estimated;
    ``var_grand_mean`` is their sum. ``replicated`` says which levels have more than one unit.
    Takes a differences table or an array (..., K, S, P); batched arrays give arrays."""
    cube = _as_cube(diffs)
    n_worlds, n_seeds, n_prompts = cube.shape[-3:]
    ms = _mean_squares(cube)
    if n_seeds > 1:
        variance = {"seed_x_prompt": ms["seed_x_prompt"], "seed": (ms["seed"] - ms["seed_x_prompt"]) / n_prompts,
                    "prompt": (ms["prompt"] - ms["seed_x_prompt"]) / n_seeds,
                    "world": (ms["world"] - ms["seed"] - ms["prompt"] + ms["seed_x_prompt"]) / (n_seeds * n_prompts)}
    else:  # one seed: the seed effect is part of the world's, the residual part of the prompts'
        unknown = np.full(ms["prompt"].shape, np.nan)
        variance = {"seed_x_prompt": unknown, "seed": unknown, "prompt": ms["prompt"],
                    "world": (ms["world"] - ms["prompt"]) / n_prompts}
    variance = {level: np.clip(variance[level], 0.0, None) for level in LEVELS}
    divisor = {"world": n_worlds, "seed": n_worlds * n_seeds, "prompt": n_worlds * n_prompts,
               "seed_x_prompt": n_worlds * n_seeds * n_prompts}
    part = {level: variance[level] / divisor[level] for level in LEVELS}
    total = np.nansum(np.stack([part[level] for level in LEVELS]), axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = {level: part[level] / total for level in LEVELS}
    return {"n_worlds": n_worlds, "n_seeds": n_seeds, "n_prompts": n_prompts,
            "replicated": {"world": n_worlds > 1, "seed": n_seeds > 1},
            "variance": {level: _plain(v) for level, v in variance.items()},
            "share": {level: _plain(s) for level, s in share.items()},
            "var_grand_mean": _plain(total)}


# ----------------------------------------------------------------------------- intervals


def _unit_means(cube: np.ndarray) -> tuple[np.ndarray, str, list[str]]:
    """The means of the top replicated level (last axis) and what they are conditional on."""
    n_worlds, n_seeds, _ = cube.shape[-3:]
    if n_worlds > 1:
        return cube.mean(axis=(-2, -1)), "world", []
    if n_seeds > 1:
        return cube[..., 0, :, :].mean(axis=-1), "seed", ["world"]
    return cube[..., 0, 0, :], "prompt", ["world", "seed"]


def _t_interval(units: np.ndarray, level: float) -> dict:
    """The t interval of the mean of i.i.d. unit values (last axis)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    n = units.shape[-1]
    estimate = units.mean(axis=-1)
    se = units.std(axis=-1, ddof=1) / math.sqrt(n)
    df = n - 1
    half = t_quantile(1.0 - (1.0 - level) / 2.0, df) * se
    mde = (t_quantile(1.0 - (1.0 - level) / 2.0, df) + t_quantile(POWER, df)) * se
    return {"estimate": _plain(estimate), "low": _plain(estimate - half), "high": _plain(estimate + half),
            "se": _plain(se), "df": df, "level": level, "mde": _plain(mde)}


def replicated_interval(diffs, level: float = 0.95) -> dict:
    """The interval of the population mean difference over every replicated level.

    With several worlds: the mean of the world means, its standard error from the spread of the
    K world means, t with K - 1 df (exact in this balanced design whatever the lower variances).
    With one world: over the S seed means (conditional on the world, its held-out prompts included,
    since its seeds answer the same prompts); with one seed too: over
    the P prompt values (conditional on world and seed). Returns ``estimate, low, high, se, df,
    level, mde`` (the true difference detected with 80% power by the two-sided test at 1 - level,
    (t_{df, 1-(1-level)/2} + t_{df, 0.8}) se), ``over`` (the level the interval is taken over),
    ``conditional_on`` (what it does not generalise over; "machine" unless the worlds of a
    differences table with a ``machine`` column ran on several machines), ``n_worlds, n_seeds,
    n_prompts`` and ``components`` (:func:`variance_components`)."""
    cube = _as_cube(diffs)
    units, over, conditional = _unit_means(cube)
    result = _t_interval(units, level)
    several_machines = (isinstance(diffs, pd.DataFrame) and "machine" in diffs.columns and over == "world"
                        and diffs.groupby("world")["machine"].first().nunique() > 1)
    n_worlds, n_seeds, n_prompts = cube.shape[-3:]
    result.update(over=over, conditional_on=conditional + ([] if several_machines else ["machine"]),
                  n_worlds=n_worlds, n_seeds=n_seeds, n_prompts=n_prompts, components=variance_components(cube))
    return result


def verdict(result: Mapping, side: str = "greater") -> str:
    """"holds" when the interval lies on the claimed ``side`` of 0 ("greater": A - B > 0,
    "less": A - B < 0), "refuted" when it lies on the other side, "inconclusive" when it
    contains 0."""
    if side not in ("greater", "less"):
        raise ValueError(f"side must be 'greater' or 'less', got {side!r}")
    above, below = result["low"] > 0, result["high"] < 0
    claimed, other = (above, below) if side == "greater" else (below, above)
    return HOLDS if claimed else REFUTED if other else INCONCLUSIVE


# ----------------------------------------------------------------------------- A/A checks


def aa_check(values: pd.DataFrame, experiment: str, twin: str, level: float = 0.95, column: str = "value") -> dict:
    """An experiment against its twin (the same settings, other seeds): the replicated interval
    of experiment - twin and ``excludes_zero`` (a false positive, since there is no true
    difference)."""
    result = replicated_interval(paired_differences(values, experiment, twin, column), level)
    return {"experiment": experiment, "twin": twin, **result,
            "excludes_zero": bool(result["low"] > 0 or result["high"] < 0)}


def aa_false_positive_rate(values: pd.DataFrame, pairs, level: float = 0.95, column: str = "value") -> dict:
    """The A/A checks of several (experiment, twin) ``pairs`` (tuples, or a table with columns
    ``experiment, twin``): ``n_pairs``, ``n_false_positives``, ``rate``, ``expected_rate``
    (1 - level), ``p_value`` (exact binomial P(at least this many | expected rate), which treats
    the pairs as independent; pairs that share worlds are not quite) and ``checks`` (a table,
    one row per pair)."""
    if isinstance(pairs, pd.DataFrame):
        _check_columns(pairs, ["experiment", "twin"], "pairs")
        pairs = list(zip(pairs["experiment"], pairs["twin"]))
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no A/A pairs given")
    checks = pd.DataFrame([{key: check[key] for key in ("experiment", "twin", "estimate", "low", "high", "df",
                                                         "over", "excludes_zero")}
                           for check in (aa_check(values, a, b, level, column) for a, b in pairs)])
    n, hits, expected = len(checks), int(checks["excludes_zero"].sum()), 1.0 - level
    p_value = sum(math.comb(n, k) * expected ** k * (1 - expected) ** (n - k) for k in range(hits, n + 1))
    return {"n_pairs": n, "n_false_positives": hits, "rate": hits / n, "expected_rate": expected,
            "p_value": min(1.0, p_value), "checks": checks}


# ----------------------------------------------------------------------------- alpha sweeps


def _alpha_cubes(diffs_by_alpha: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The sorted alphas and their differences stacked as (..., A, K, S, P). Tables must cover
    the same worlds and, per world, the same prompts."""
    alphas = np.array(sorted(diffs_by_alpha), dtype=float)
    if len(alphas) < 4:
        raise ValueError(f"an alpha sweep needs at least 4 alphas, got {len(alphas)}")
    if not (alphas > 0).all():
        raise ValueError(f"alphas must be positive (they enter as log alpha), got {alphas.tolist()}")
    layouts, cubes = [], []
    for alpha in sorted(diffs_by_alpha):
        diffs = diffs_by_alpha[alpha]
        if isinstance(diffs, pd.DataFrame):
            cube, worlds, prompts = _cube(diffs)
            layouts.append((alpha, worlds, prompts))
        else:
            cube = _as_cube(diffs)
        cubes.append(cube)
    shapes = {cube.shape for cube in cubes}
    if len(shapes) > 1:
        raise ValueError(f"the alphas' differences differ in shape (worlds, seeds, prompts): {sorted(shapes)}")
    for alpha, worlds, prompts in layouts[1:]:
        first_alpha, first_worlds, first_prompts = layouts[0]
        if worlds != first_worlds or any(not np.array_equal(p, q) for p, q in zip(prompts, first_prompts)):
            raise ValueError(f"alpha {alpha:g} covers other worlds or prompts than alpha {first_alpha:g}")
    return alphas, np.stack(cubes, axis=-4)


def alpha_trend_test(diffs_by_alpha: Mapping, level: float = 0.95) -> dict:
    """"Alpha matters": the win-rate difference (vs DPO) changes with the penalty weight alpha.

    ``diffs_by_alpha`` maps each alpha (at least 4) to its differences from the same baseline
    (tables, or arrays (..., K, S, P)). Per unit of the top replicated level (world; seed when
    K == 1), the unit's mean difference at each alpha is fitted by least squares in x = log alpha:
    ``slope`` is the coefficient of a line, ``curvature`` the x^2 coefficient of a quadratic (it
    catches an interior optimum a line misses). Units are independent and share nothing across
    them, so under "no alpha effect" the per-unit coefficients have mean 0 whatever the unit
    effects are, and the t interval of their mean over units (U - 1 df) is calibrated. Holds when
    either interval excludes 0, each at the Bonferroni level 1 - (1 - level)/2, so the test's
    false-positive rate is at most 1 - level; otherwise inconclusive (absence of an effect is not
    shown by this test)."""
    alphas, cubes = _alpha_cubes(diffs_by_alpha)
    units, over, conditional = _unit_means(cubes)  # (..., A, U)
    x = np.log(alphas) - np.log(alphas).mean()
    line = x / (x ** 2).sum()
    quadratic = x ** 2 - (x ** 2).mean() - x * ((x ** 3).sum() / (x ** 2).sum())  # x^2 orthogonal to 1 and x
    quadratic = quadratic / (quadratic ** 2).sum()
    adjusted = 1.0 - (1.0 - level) / 2.0
    slope = _t_interval(np.einsum("a,...au->...u", line, units), adjusted)
    curvature = _t_interval(np.einsum("a,...au->...u", quadratic, units), adjusted)
    detected = (np.asarray(slope["low"]) > 0) | (np.asarray(slope["high"]) < 0) \
        | (np.asarray(curvature["low"]) > 0) | (np.asarray(curvature["high"]) < 0)
    verdicts = np.where(detected, HOLDS, INCONCLUSIVE)
    return {"alphas": alphas.tolist(), "slope": slope, "curvature": curvature, "level": level,
            "adjusted_level": adjusted, "over": over, "conditional_on": conditional + ["machine"],
            "verdict": str(verdicts) if verdicts.ndim == 0 else verdicts}


def split_prompts(prompt_ids, seed: int, validation_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A deterministic split of prompt ids into (validation, test), disjoint and covering every id:
    the sorted unique ids, shuffled by ``seed``, the first round(share x n) for validation. The
    same ids and seed give the same split, whatever their order, for every experiment and world."""
    ids = np.unique(np.asarray(prompt_ids))
    n_validation = int(round(validation_share * len(ids)))
    if not 0 < n_validation < len(ids):
        raise ValueError(f"a split of {len(ids)} prompt(s) with validation share {validation_share} "
                         f"leaves a side empty")
    order = np.random.default_rng(seed).permutation(len(ids))
    return np.sort(ids[order[:n_validation]]), np.sort(ids[order[n_validation:]])


def _restrict(diffs: pd.DataFrame, keep: Mapping) -> pd.DataFrame:
    """The rows of each world whose prompt is among ``keep[world]``."""
    mask = np.zeros(len(diffs), dtype=bool)
    for world, ids in keep.items():
        mask |= (diffs["world"] == world).to_numpy() & diffs["prompt_id"].isin(ids).to_numpy()
    return diffs[mask]


def _contrast(minuend: pd.DataFrame, subtrahend: pd.DataFrame) -> pd.DataFrame:
    merged = minuend.merge(subtrahend[[*KEY, "diff"]], on=KEY, suffixes=("", "_other"), validate="one_to_one")
    return merged.assign(diff=merged["diff"] - merged["diff_other"]).drop(columns="diff_other")


def interior_beats_ends(diffs_by_alpha: Mapping[float, pd.DataFrame], split_seed: int = 0,
                        validation_share: float = 0.5, level: float = 0.95) -> dict:
    """"An interior alpha beats both ends": the alpha is chosen on validation prompts and tested
    on the disjoint test prompts of every world (:func:`split_prompts` per world).

    Choice: the interior alpha (neither the smallest nor the largest) with the highest mean
    difference over the validation prompts of all worlds and seeds. Test: the contrasts chosen -
    smallest and chosen - largest on the test prompts, each a :func:`replicated_interval` whose
    lower bound is one-sided at ``level`` (the two-sided interval at 2 level - 1). Intersection-
    union test: holds when both lower bounds lie above 0 (no multiplicity correction is needed),
    refuted when either upper bound lies below 0, inconclusive otherwise."""
    alphas, _ = _alpha_cubes(diffs_by_alpha)
    by_alpha = {float(alpha): diffs_by_alpha[alpha] for alpha in sorted(diffs_by_alpha)}
    first = next(iter(by_alpha.values()))
    if not isinstance(first, pd.DataFrame):
        raise ValueError("interior_beats_ends needs tables of differences (it splits by prompt_id)")
    validation, test = {}, {}
    for world, part in first.groupby("world", sort=True):
        validation[world], test[world] = split_prompts(part["prompt_id"], split_seed, validation_share)
    validation_means = {alpha: float(_restrict(diffs, validation)["diff"].mean()) for alpha, diffs in by_alpha.items()}
    interior = alphas[1:-1].tolist()
    chosen = max(interior, key=lambda alpha: validation_means[alpha])
    one_sided = 2.0 * level - 1.0
    chosen_test = _restrict(by_alpha[chosen], test)
    contrasts = {name: replicated_interval(_contrast(chosen_test, _restrict(by_alpha[end], test)), one_sided)
                 for name, end in (("vs_smallest", alphas[0]), ("vs_largest", alphas[-1]))}
    lows = [c["low"] for c in contrasts.values()]
    highs = [c["high"] for c in contrasts.values()]
    outcome = HOLDS if min(lows) > 0 else REFUTED if min(highs) < 0 else INCONCLUSIVE
    return {"chosen_alpha": chosen, "validation_means": validation_means, "validation_prompts": validation,
            "test_prompts": test, **contrasts, "level": level, "verdict": outcome}


# ----------------------------------------------------------------------------- "X is best"


def simultaneous_best(values: pd.DataFrame, best: str, others: Sequence[str] | None = None, level: float = 0.95,
                      column: str = "value") -> dict:
    """"``best`` beats every other run": the replicated interval of best - other for each other
    run (every other experiment of ``values`` when ``others`` is None), Bonferroni-adjusted to
    simultaneous coverage ``level``. Holds when every interval lies above 0, refuted when one
    lies below 0 (that run beats ``best``), inconclusive otherwise. ``comparisons``: a table,
    one row per other run."""
    if others is None:
        others = sorted(set(values["experiment"]) - {best})
    others = list(others)
    if not others:
        raise ValueError(f"no run to compare {best!r} with")
    adjusted = 1.0 - (1.0 - level) / len(others)
    rows = []
    for other in others:
        result = replicated_interval(paired_differences(values, best, other, column), adjusted)
        rows.append({"other": other, **{key: result[key] for key in ("estimate", "low", "high", "se", "df", "over",
                                                                     "mde")}})
    comparisons = pd.DataFrame(rows)
    outcome = HOLDS if (comparisons["low"] > 0).all() else REFUTED if (comparisons["high"] < 0).any() else INCONCLUSIVE
    return {"best": best, "level": level, "adjusted_level": adjusted, "comparisons": comparisons, "verdict": outcome}
