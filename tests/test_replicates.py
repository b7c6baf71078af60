"""Replicated intervals (worlds > seeds x prompts): coverage, A/A false positives, variance
components, the alpha tests and input checks, on simulations vectorised over data sets."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dppo.evaluate import winrate
from dppo.evaluate.replicates import (
    aa_false_positive_rate,
    alpha_trend_test,
    interior_beats_ends,
    paired_differences,
    replicated_interval,
    simultaneous_best,
    split_prompts,
    t_quantile,
    variance_components,
    verdict,
)

K, S, P = 4, 2, 50  # worlds, seeds per world, prompts per world
SD = {"world": 0.15, "seed": 0.08, "prompt": 0.3, "seed_x_prompt": 0.3}  # world large, seed medium, prompts large
TRUE_DIFF = 0.1
N_SIMS = 2000  # enough that a 95% rate is known to +-1% (binomial sd 0.5%)


def simulate(rng, n_sims, sd=SD, shape=(K, S, P), mean=0.0) -> np.ndarray:
    """(n_sims, K, S, P) differences of the crossed random-effects model
    mean + world + seed + prompt (shared by the world's seeds) + seed x prompt."""
    k, s, p = shape
    return (mean + sd["world"] * rng.standard_normal((n_sims, k, 1, 1))
            + sd["seed"] * rng.standard_normal((n_sims, k, s, 1))
            + sd["prompt"] * rng.standard_normal((n_sims, k, 1, p))
            + sd["seed_x_prompt"] * rng.standard_normal((n_sims, k, s, p)))


def long_table(cube: np.ndarray, experiment: str, seeds=None) -> pd.DataFrame:
    """A (K, S, P) array as rows ``world, experiment, seed, prompt_id, value``."""
    k, s, p = cube.shape
    seeds = list(range(s)) if seeds is None else list(seeds)
    world, seed, prompt = np.meshgrid(range(k), range(s), range(p), indexing="ij")
    return pd.DataFrame({"world": world.ravel(), "experiment": experiment,
                         "seed": np.asarray(seeds)[seed.ravel()], "prompt_id": [f"w{w}p{q:03d}" for w, q in
                                                                               zip(world.ravel(), prompt.ravel())],
                         "value": cube.ravel()})


def against_zero(cube: np.ndarray) -> pd.DataFrame:
    """The differences table of an experiment with values ``cube`` against one with zeros."""
    return paired_differences(pd.concat([long_table(cube, "pen"), long_table(np.zeros_like(cube), "dpo")]),
                              "pen", "dpo")


def covers(result, truth) -> np.ndarray:
    return (np.asarray(result["low"]) <= truth) & (truth <= np.asarray(result["high"]))


# ----------------------------------------------------------------------------- t quantiles


def test_t_quantiles_match_closed_forms_and_tables():
    for p in (0.6, 0.8, 0.975, 0.9995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    assert t_quantile(0.975, 3) == pytest.approx(3.182446305284263, rel=1e-9)
    assert t_quantile(0.975, 10) == pytest.approx(2.228138851964938, rel=1e-9)
    assert t_quantile(0.8, 3) == pytest.approx(0.9784723123633045, rel=1e-9)
    assert t_quantile(0.025, 3) == -t_quantile(0.975, 3)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963984540054, rel=1e-12)


# ----------------------------------------------------------------------------- coverage


def test_replicated_interval_covers_the_truth_and_prompts_only_does_not():
    cubes = simulate(np.random.default_rng(1), N_SIMS, mean=TRUE_DIFF)
    result = replicated_interval(cubes)
    coverage = covers(result, TRUE_DIFF).mean()
    assert 0.93 <= coverage <= 0.97, coverage
    assert result["df"] == K - 1 and result["over"] == "world" and result["conditional_on"] == ["machine"]

    # Today's method on the same data: seed means per prompt, percentile bootstrap over prompts only.
    prompts_only = [winrate.bootstrap_interval(cube.mean(axis=1).ravel(), n_boot=1000, seed=0, level=0.95)
                    for cube in cubes[:300]]
    coverage_prompts_only = np.mean([low <= TRUE_DIFF <= high for low, high in prompts_only])
    assert coverage_prompts_only < 0.80, coverage_prompts_only


def test_a_table_and_its_array_give_the_same_interval():
    cube = simulate(np.random.default_rng(2), 1, mean=TRUE_DIFF)[0]
    values = pd.concat([long_table(cube, "a"), long_table(np.zeros_like(cube), "b")]).sample(frac=1, random_state=0)
    from_table = replicated_interval(paired_differences(values, "a", "b"))  # rows shuffled: pairing is by key
    from_array = replicated_interval(cube)
    for key in ("estimate", "low", "high", "se", "mde"):
        assert from_table[key] == pytest.approx(from_array[key], rel=1e-12)
    assert from_table["estimate"] == pytest.approx(cube.mean())
    assert from_table["se"] == pytest.approx(cube.mean(axis=(1, 2)).std(ddof=1) / math.sqrt(K))
    t975, t80 = t_quantile(0.975, K - 1), t_quantile(0.8, K - 1)
    assert from_table["high"] - from_table["estimate"] == pytest.approx(t975 * from_table["se"])
    assert from_table["mde"] == pytest.approx((t975 + t80) * from_table["se"])


def test_fewer_replicated_levels_give_conditional_intervals():
    cube = simulate(np.random.default_rng(3), 1, shape=(1, 3, 20))[0]
    by_seed = replicated_interval(cube)
    assert (by_seed["over"], by_seed["df"], by_seed["conditional_on"]) == ("seed", 2, ["world", "machine"])
    assert by_seed["se"] == pytest.approx(cube[0].mean(axis=1).std(ddof=1) / math.sqrt(3))
    by_prompt = replicated_interval(cube[:, :1])
    assert (by_prompt["over"], by_prompt["df"]) == ("prompt", 19)
    assert by_prompt["conditional_on"] == ["world", "seed", "machine"]
    assert by_prompt["se"] == pytest.approx(cube[0, 0].std(ddof=1) / math.sqrt(20))


def test_worlds_on_several_machines_are_not_conditional_on_the_machine():
    cube = simulate(np.random.default_rng(4), 1)[0]
    values = pd.concat([long_table(cube, "a"), long_table(np.zeros_like(cube), "b")])
    assert replicated_interval(paired_differences(values, "a", "b"))["conditional_on"] == ["machine"]
    one_machine = paired_differences(values.assign(machine="h100"), "a", "b")
    assert replicated_interval(one_machine)["conditional_on"] == ["machine"]
    several = paired_differences(values.assign(machine=np.where(values["world"] % 2, "h100", "h200")), "a", "b")
    assert replicated_interval(several)["conditional_on"] == []


def test_verdict_reads_the_side_of_zero():
    assert verdict({"low": 0.1, "high": 0.3}) == "holds"
    assert verdict({"low": 0.1, "high": 0.3}, side="less") == "refuted"
    assert verdict({"low": -0.3, "high": -0.1}, side="less") == "holds"
    assert verdict({"low": -0.3, "high": -0.1}) == "refuted"
    assert verdict({"low": -0.1, "high": 0.1}) == "inconclusive"
    with pytest.raises(ValueError, match="side"):
        verdict({"low": 0.1, "high": 0.3}, side="above")


# ----------------------------------------------------------------------------- A/A


def simulate_twins(rng, n_sims):
    """An experiment and its twin (same settings, other seeds): the world, its data order-free
    effects and its prompts are shared; seeds and seed x prompt noise are drawn per experiment."""
    shared = simulate(rng, n_sims, sd={**SD, "seed": 0.0, "seed_x_prompt": 0.0}, mean=0.5)
    own = {"seed": SD["seed"], "seed_x_prompt": SD["seed_x_prompt"], "world": 0.0, "prompt": 0.0}
    return shared + simulate(rng, n_sims, sd=own), shared + simulate(rng, n_sims, sd=own)


def test_aa_false_positive_rate_is_nominal_and_prompts_only_is_not():
    experiment, twin = simulate_twins(np.random.default_rng(5), N_SIMS)
    result = replicated_interval(experiment - twin)
    false_positive_rate = 1 - covers(result, 0.0).mean()
    assert 0.03 <= false_positive_rate <= 0.07, false_positive_rate

    # Prompts only (t over the pooled per-prompt seed means) ignores the seed variance.
    prompt_means = (experiment - twin).mean(axis=2).reshape(N_SIMS, -1)
    se = prompt_means.std(axis=1, ddof=1) / math.sqrt(prompt_means.shape[1])
    prompts_only_rate = np.mean(np.abs(prompt_means.mean(axis=1)) > 1.96 * se)
    assert prompts_only_rate > 0.2, prompts_only_rate


def test_aa_pairs_from_a_table_with_other_seeds():
    n_pairs = 40
    experiment, twin = simulate_twins(np.random.default_rng(6), n_pairs)
    # Twins run other seeds (10, 11): they are paired by position within the world.
    values = pd.concat([long_table(experiment[i], f"x{i}") for i in range(n_pairs)]
                       + [long_table(twin[i], f"x{i}_twin", seeds=[10, 11]) for i in range(n_pairs)])
    report = aa_false_positive_rate(values, [(f"x{i}", f"x{i}_twin") for i in range(n_pairs)])
    expected = int((~covers(replicated_interval(experiment - twin), 0.0)).sum())
    assert report["n_pairs"] == n_pairs and report["n_false_positives"] == expected
    assert report["rate"] == pytest.approx(expected / n_pairs) and report["expected_rate"] == pytest.approx(0.05)
    assert set(report["checks"]["over"]) == {"world"}
    assert report["checks"].loc[0, "estimate"] == pytest.approx((experiment[0] - twin[0]).mean())
    # 17 of 39 A/A intervals excluding 0 (the review) is far beyond a 5% rate.
    shifted = values.assign(value=values["value"] + np.where(values["experiment"].isin(
        [f"x{i}" for i in range(17)]), 10.0, 0.0))
    many = aa_false_positive_rate(shifted, pd.DataFrame({"experiment": [f"x{i}" for i in range(n_pairs)],
                                                         "twin": [f"x{i}_twin" for i in range(n_pairs)]}))
    assert many["n_false_positives"] >= 17 and many["p_value"] < 1e-6


# ----------------------------------------------------------------------------- variance components


def test_variance_components_recover_the_simulated_ones():
    cubes = simulate(np.random.default_rng(7), N_SIMS)
    components = variance_components(cubes)
    for level, sd in SD.items():
        assert np.mean(components["variance"][level]) == pytest.approx(sd ** 2, rel=0.15), level
    assert components["replicated"] == {"world": True, "seed": True}
    shares = np.stack([components["share"][level] for level in SD])
    assert np.allclose(shares.sum(axis=0), 1.0)
    truth = {"world": SD["world"] ** 2 / K, "seed": SD["seed"] ** 2 / (K * S), "prompt": SD["prompt"] ** 2 / (K * P),
             "seed_x_prompt": SD["seed_x_prompt"] ** 2 / (K * S * P)}
    for level in SD:
        assert np.median(components["share"][level]) == pytest.approx(truth[level] / sum(truth.values()), abs=0.1)


def test_unclipped_components_add_up_to_the_interval_variance():
    # With no component clipped, the components' variance of the grand mean is the interval's se^2.
    cube = simulate(np.random.default_rng(8), 1, sd={"world": 0.3, "seed": 0.2, "prompt": 0.4, "seed_x_prompt": 0.1})[0]
    components = variance_components(cube)
    assert min(components["variance"].values()) > 0
    assert components["var_grand_mean"] == pytest.approx(replicated_interval(cube)["se"] ** 2, rel=1e-10)


def test_components_of_unreplicated_levels_are_not_estimated():
    cube = simulate(np.random.default_rng(9), 1, shape=(1, 1, 30))[0]
    components = variance_components(cube)
    assert components["replicated"] == {"world": False, "seed": False}
    assert math.isnan(components["variance"]["world"]) and math.isnan(components["variance"]["seed"])
    assert components["variance"]["prompt"] == pytest.approx(cube.var(ddof=1))
    assert components["share"]["prompt"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- alpha tests

ALPHAS = [0.01, 0.1, 1.0, 10.0, 100.0]


def simulate_sweep(rng, n_sims, effect_of_log_alpha) -> dict[float, np.ndarray]:
    """Differences vs DPO per alpha: the world's effect and its prompts are shared by all alphas
    (one DPO baseline, one SFT model); each alpha adds its own world x alpha, seed and noise terms."""
    shared = simulate(rng, n_sims, sd={**SD, "seed": 0.0, "seed_x_prompt": 0.0})
    own = {"world": 0.05, "seed": SD["seed"], "prompt": 0.1, "seed_x_prompt": SD["seed_x_prompt"]}
    return {alpha: shared + effect_of_log_alpha(math.log(alpha)) + simulate(rng, n_sims, sd=own) for alpha in ALPHAS}


def test_alpha_trend_test_is_calibrated_and_powerful():
    null = alpha_trend_test(simulate_sweep(np.random.default_rng(10), N_SIMS, lambda x: 0.0))
    slope_false_positives = 1 - covers(null["slope"], 0.0).mean()
    assert 0.015 <= slope_false_positives <= 0.04, slope_false_positives  # each test at the Bonferroni 2.5%
    false_positive_rate = np.mean(null["verdict"] == "holds")
    assert 0.03 <= false_positive_rate <= 0.07, false_positive_rate

    trend = alpha_trend_test(simulate_sweep(np.random.default_rng(11), N_SIMS, lambda x: 0.04 * x))
    assert np.mean(trend["verdict"] == "holds") > 0.8
    assert np.mean(trend["slope"]["estimate"]) == pytest.approx(0.04, rel=0.05)

    # An interior optimum with no linear trend is caught by the curvature.
    bump = alpha_trend_test(simulate_sweep(np.random.default_rng(12), N_SIMS, lambda x: -0.015 * x ** 2))
    assert np.mean(bump["verdict"] == "holds") > 0.8
    assert np.mean(bump["curvature"]["estimate"]) == pytest.approx(-0.015, rel=0.05)


def test_alpha_trend_test_takes_tables():
    sweep = simulate_sweep(np.random.default_rng(13), 1, lambda x: 0.0)
    tables = {alpha: against_zero(cube[0]) for alpha, cube in sweep.items()}
    from_tables, from_arrays = alpha_trend_test(tables), alpha_trend_test({a: c[0] for a, c in sweep.items()})
    assert from_tables["slope"]["estimate"] == pytest.approx(from_arrays["slope"]["estimate"])
    assert from_tables["verdict"] == from_arrays["verdict"] and from_tables["over"] == "world"
    with pytest.raises(ValueError, match="at least 4 alphas"):
        alpha_trend_test({a: tables[a] for a in ALPHAS[:3]})


def test_split_prompts_is_deterministic_disjoint_and_complete():
    ids = [f"p{i}" for i in range(11)]
    validation, test = split_prompts(ids, seed=3)
    assert set(validation).isdisjoint(test) and set(validation) | set(test) == set(ids)
    assert len(validation) == round(0.5 * 11)
    again = split_prompts(list(reversed(ids)), seed=3)
    assert list(again[0]) == list(validation) and list(again[1]) == list(test)
    assert list(split_prompts(ids, seed=4)[0]) != list(validation)
    with pytest.raises(ValueError, match="empty"):
        split_prompts(ids[:1], seed=0)


def sweep_tables(rng, bump_at=None, size=0.3) -> dict[float, pd.DataFrame]:
    cubes = simulate_sweep(rng, 1, lambda x: 0.0)
    if bump_at is not None:
        cubes[bump_at] = cubes[bump_at] + size
    return {alpha: against_zero(cube[0]) for alpha, cube in cubes.items()}


def test_interior_alpha_is_chosen_on_validation_prompts_only():
    tables = sweep_tables(np.random.default_rng(14))
    result = interior_beats_ends(tables, split_seed=1)
    for world, validation in result["validation_prompts"].items():
        test = result["test_prompts"][world]
        assert set(validation).isdisjoint(test)
        assert set(validation) | set(test) == set(tables[1.0].loc[tables[1.0]["world"] == world, "prompt_id"])
    chosen = result["chosen_alpha"]
    assert chosen in ALPHAS[1:-1]

    def shifted(where, by_alpha):
        """Every table with ``by_alpha[alpha]`` added to the rows on the ``where`` prompts."""
        prompts = set().union(*map(set, result[where].values()))
        return {alpha: table.assign(diff=table["diff"] + np.where(table["prompt_id"].isin(prompts), by_alpha[alpha],
                                                                  0.0)) for alpha, table in tables.items()}

    rng = np.random.default_rng(15)
    for _ in range(5):  # whatever the test prompts say, the choice stays
        noise = dict(zip(ALPHAS, rng.normal(0, 5, len(ALPHAS))))
        assert interior_beats_ends(shifted("test_prompts", noise), split_seed=1)["chosen_alpha"] == chosen
    other = next(alpha for alpha in ALPHAS[1:-1] if alpha != chosen)
    boost = {alpha: 5.0 if alpha == other else 0.0 for alpha in ALPHAS}
    assert interior_beats_ends(shifted("validation_prompts", boost), split_seed=1)["chosen_alpha"] == other


def test_interior_beats_ends_holds_only_for_a_real_optimum():
    real = interior_beats_ends(sweep_tables(np.random.default_rng(16), bump_at=1.0))
    assert real["chosen_alpha"] == 1.0 and real["verdict"] == "holds"
    assert real["vs_smallest"]["low"] > 0 and real["vs_largest"]["low"] > 0
    assert real["vs_smallest"]["level"] == pytest.approx(0.9)  # two-sided 90% = one-sided 95% lower bound
    flat = interior_beats_ends(sweep_tables(np.random.default_rng(17)))
    assert flat["verdict"] != "holds"
    worse = interior_beats_ends(sweep_tables(np.random.default_rng(18), bump_at=100.0, size=0.6))
    assert worse["verdict"] == "refuted"


# ----------------------------------------------------------------------------- X is best


def test_simultaneous_best_needs_every_interval_above_zero():
    rng = np.random.default_rng(19)
    base = simulate(rng, 1, sd={**SD, "seed": 0.0, "seed_x_prompt": 0.0})[0]
    own = {"world": 0.02, "seed": 0.03, "prompt": 0.05, "seed_x_prompt": 0.2}
    runs = {"x": 0.3, "y": 0.0, "z": 0.05}
    values = pd.concat([long_table(base + shift + simulate(rng, 1, sd=own)[0], name) for name, shift in runs.items()])
    best = simultaneous_best(values, "x")
    assert best["verdict"] == "holds" and list(best["comparisons"]["other"]) == ["y", "z"]
    assert best["adjusted_level"] == pytest.approx(1 - 0.05 / 2)
    assert (best["comparisons"]["low"] > 0).all()
    assert simultaneous_best(values, "z")["verdict"] == "refuted"  # x beats z
    close = values.assign(value=values["value"] - np.where(values["experiment"] == "x", 0.28, 0.0))
    assert simultaneous_best(close, "x", others=["z"])["verdict"] == "inconclusive"


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def balanced():
    cube = simulate(np.random.default_rng(20), 1, shape=(3, 2, 4))[0]
    return pd.concat([long_table(cube, "a"), long_table(cube + 1, "b")], ignore_index=True)


def test_balanced_input_pairs(balanced):
    diffs = paired_differences(balanced, "a", "b")
    assert len(diffs) == 3 * 2 * 4 and np.allclose(diffs["diff"], -1.0)


def test_unpaired_or_unbalanced_input_is_refused(balanced):
    is_b = balanced["experiment"] == "b"
    cases = [
        (balanced.drop(columns="prompt_id"), r"lacks column\(s\) \['prompt_id'\]"),
        (balanced[~is_b], "no rows for experiment 'b'"),
        (balanced[~(is_b & (balanced["world"] == 2))], r"world\(s\) \[2\] missing for experiment 'b'"),
        (balanced[~(is_b & (balanced["world"] == 1) & (balanced["seed"] == 1))], "world 1: experiment 'a' has seeds"),
        (balanced[~(is_b & (balanced["prompt_id"] == "w0p003") & (balanced["seed"] == 1))],
         "prompt_id 'w0p003' of world 0, seed 1 of 'a' is missing for experiment 'b'"),
        (balanced[balanced["prompt_id"] != "w1p002"], "unbalanced design: world 1 has 2 seed"),
        (balanced[~((balanced["prompt_id"] == "w2p001") & (balanced["seed"] == 0))],
         "prompt_id 'w2p001' is missing for world 2, seed 0"),
        (pd.concat([balanced, balanced.iloc[[5]]]), "experiment 'a' repeats world 0, seed 1, prompt_id 'w0p001'"),
        (balanced.assign(value=balanced["value"].where(balanced.index != 7)), "missing value for experiment 'a'"),
    ]
    for table, message in cases:
        with pytest.raises(ValueError, match=message):
            paired_differences(table, "a", "b")


def test_the_module_imports_neither_torch_nor_transformers():
    code = ("import sys, dppo.evaluate.replicates; "
            "sys.exit(bool({'torch', 'transformers', 'scipy'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
