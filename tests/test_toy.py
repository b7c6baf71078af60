"""The 3D-properties toy model: set-up, step 1, gradient recording, determinism."""

from __future__ import annotations

import copy
import dataclasses
import math
import re

import pandas as pd
import pytest
import torch
from numerics import U64, assert_within, gamma

from dppo import settings as st
from dppo.report.latex import latex_number, macro_name
from dppo.settings import LossSettings
from dppo.toy import model as tm
from dppo.toy import summary as ts
from dppo.toy import training as tt
from dppo.train.losses import preference_loss

# Sums a toy log-prob passes through: three linear layers and the log-softmax.
N_LAYERS = 4

SMALL = st.ToySettings(
    seeds=(0,),
    hidden=16,
    sft_steps=300,
    sft_lr=1e-2,
    steps=20,
    lr=1e-2,
    pairs_per_prompt=3,
    losses={"dpo": LossSettings(name="dpo"), "minll": LossSettings(name="minll", alpha=0.5)},
)


@pytest.mark.parametrize(
    "number, chosen, rejected",
    [(1, 0.3, 0.1), (2, 0.03, 0.1), (3, 0.3, 0.01), (4, 0.03, 0.01)],
)
def test_initial_distribution_of_each_scenario(number, chosen, rejected):
    scenario = tm.SCENARIOS[number - 1]
    assert scenario.number == number
    target = tm.initial_distribution(scenario, st.InitialLevels())
    assert target.shape == (4, 10)
    rest = (1 - chosen - 4 * rejected) / 5
    for prompt in range(4):
        expected = [rest] * 10
        expected[prompt] = chosen
        expected[4:8] = [rejected] * 4
        assert target[prompt].tolist() == pytest.approx(expected, abs=1e-12)
    assert target.sum(-1).tolist() == pytest.approx([1.0] * 4, abs=1e-12)


def test_on_policy_means_higher_initial_probability():
    s1, s2, s3, s4 = (tm.initial_distribution(s, st.InitialLevels()) for s in tm.SCENARIOS)
    assert s1[0, 0] > s2[0, 0] and s3[0, 0] > s4[0, 0]  # chosen on vs off
    assert s1[0, 4] > s3[0, 4] and s2[0, 4] > s4[0, 4]  # rejected on vs off


def test_initial_levels_that_leave_no_mass_are_refused():
    with pytest.raises(ValueError, match="scenario 1"):
        tm.initial_distribution(tm.SCENARIOS[0], st.InitialLevels(chosen_on=0.7, rejected_on=0.1))


def test_policy_is_a_three_layer_mlp_over_ten_responses():
    policy = tm.build_policy(hidden=8, seed=0)
    linears = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4, 8), (8, 8), (8, 10)]
    logp = policy()
    assert logp.shape == (4, 10) and logp.dtype == torch.float64
    assert torch.logsumexp(logp, -1).tolist() == pytest.approx([0.0] * 4, abs=1e-12)
    same = tm.build_policy(hidden=8, seed=0)
    assert torch.equal(same(), logp)
    assert not torch.equal(tm.build_policy(hidden=8, seed=1)(), logp)


@pytest.mark.parametrize("number, greedy", [(1, [0, 1, 2, 3]), (3, [0, 1, 2, 3])])
def test_step1_reaches_the_target_and_y_gen_is_its_argmax(number, greedy):
    target = tm.initial_distribution(tm.SCENARIOS[number - 1], st.InitialLevels())
    policy = tm.StackedPolicy.stack([tm.build_policy(hidden=16, seed=0)])
    kl = tm.fit_distribution(policy, target[None], steps=300, lr=1e-2)
    assert kl.shape == (1,) and float(kl[0]) < 1e-4
    with torch.no_grad():
        logp = policy()[0]
    assert logp.exp().numpy() == pytest.approx(target.numpy(), abs=5e-3)
    # In scenarios 1 and 3 the optimal response is the most likely one after step 1.
    assert tm.greedy_responses(logp).tolist() == greedy
    assert tm.greedy_responses(logp).tolist() == [int(row.argmax()) for row in logp.exp()]


def test_preference_pairs():
    pairs = tm.make_preference_pairs(pairs_per_prompt=5, seed=3)
    assert len(pairs) == 20
    assert pairs.prompt.tolist() == [p for p in range(4) for _ in range(5)]
    assert torch.equal(pairs.chosen, pairs.prompt)  # the optimal response is always chosen
    assert set(pairs.rejected.tolist()) <= {4, 5, 6, 7}
    assert torch.equal(tm.make_preference_pairs(5, seed=3).rejected, pairs.rejected)
    assert not torch.equal(tm.make_preference_pairs(5, seed=4).rejected, pairs.rejected)
    with pytest.raises(ValueError, match="pairs_per_prompt"):
        tm.make_preference_pairs(0, seed=0)


def test_pair_logps_are_single_token_log_softmax_entries():
    logp = torch.log_softmax(torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), -1)
    pairs = tm.make_preference_pairs(2, seed=0)
    y_gen = torch.tensor([9, 8, 2, 3])
    out = tm.pair_logps(logp[pairs.prompt], pairs.chosen, pairs.rejected, y_gen[pairs.prompt])
    for i in range(len(pairs)):
        x = int(pairs.prompt[i])
        assert out.chosen[i] == logp[x, x]
        assert out.rejected[i] == logp[x, pairs.rejected[i]]
        assert out.gen[i] == logp[x, y_gen[x]]
    assert out.gen_token_logps.shape == (8, 1) and torch.equal(out.gen_token_logps[:, 0], out.gen)
    assert out.gen_token_mask.all()
    assert out.chosen_len.tolist() == out.rejected_len.tolist() == out.gen_len.tolist() == [1.0] * 8


def test_distribution_summary_by_hand():
    probs = torch.full((4, 10), 0.05, dtype=torch.float64)
    probs[:, 0] = 0.55  # response 0: optimal for prompt 0, "other chosen" for prompts 1..3
    summary = {k: float(v) for k, v in tm.distribution_summary(probs.log()).items()}
    assert summary["p_chosen"] == pytest.approx((0.55 + 3 * 0.05) / 4)
    assert summary["p_rejected"] == pytest.approx(0.2)
    assert summary["p_unseen"] == pytest.approx(0.1)
    assert summary["p_other_chosen"] == pytest.approx((3 * 0.05 + 3 * (0.55 + 0.1)) / 4)
    assert summary["p_outside"] == pytest.approx(1 - summary["p_chosen"] - 0.2)


def _train_one(policy, reference_logp, pairs, y_gen, loss_cfg, steps, lr) -> pd.DataFrame:
    """Step 2 of a single run through the batched trainer."""
    return tt.train_runs(
        tm.StackedPolicy.stack([policy]), reference_logp[None], tm.PreferencePairs.stack([pairs]),
        y_gen[None], [loss_cfg], steps=steps, lr=lr,
    )


def test_recorded_gradients_match_the_dpo_formula_at_the_reference():
    # At step 0 the policy IS the reference, so the DPO margin is 0 and sigma(-0) = 1/2:
    # |dL/dpi_w| = beta / (2 pi_w), |dL/dpi_l| = beta / (2 pi_l) (seed 002, Corollary 1).
    policy = tm.build_policy(hidden=8, seed=0)
    with torch.no_grad():
        reference_logp = policy().clone()
    pairs = tm.make_preference_pairs(3, seed=0)
    beta = 0.2
    records = _train_one(
        policy, reference_logp, pairs, tm.greedy_responses(reference_logp),
        LossSettings(name="dpo", beta=beta), steps=2, lr=1e-2,
    ).to_dict("records")
    probs = reference_logp.exp()
    expected_w = (beta / 2 / probs[pairs.prompt, pairs.chosen]).mean()
    expected_l = (beta / 2 / probs[pairs.prompt, pairs.rejected]).mean()
    assert records[0]["grad_chosen"] == pytest.approx(float(expected_w), rel=1e-10)
    assert records[0]["grad_rejected"] == pytest.approx(float(expected_l), rel=1e-10)
    assert records[0]["loss_value"] == pytest.approx(math.log(2), rel=1e-12)
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[1]["p_chosen"] > records[0]["p_chosen"]
    assert records[1]["p_rejected"] < records[0]["p_rejected"]


def test_stacked_policy_is_the_seeded_policies_side_by_side():
    policies = [tm.build_policy(hidden=8, seed=seed) for seed in (3, 1, 3)]
    stacked = tm.StackedPolicy.stack(policies)
    assert stacked.n_runs == 3
    logp = stacked()
    assert logp.shape == (3, 4, 10) and logp.dtype == torch.float64
    for run, policy in enumerate(policies):  # a batched matmul may round otherwise than one run's
        alone = policy()
        assert_within(logp[run], alone, N_LAYERS * gamma(8 + 1, U64) * (1 + alone.abs()), f"run {run}")
    assert torch.equal(logp[0], logp[2]) and not torch.equal(logp[0], logp[1])
    copies = stacked.select(torch.tensor([1, 1, 0]))
    assert torch.equal(copies()[0], logp[1]) and torch.equal(copies()[2], logp[0])
    with torch.no_grad():
        copies.weights[0][0] += 1.0  # a copy shares no storage with its source
    assert torch.equal(stacked()[1], logp[1])


def test_low_rank_output_layer_shares_a_rank_k_map():
    policy = tm.build_policy(hidden=8, seed=0, output_rank=2)
    linears = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features, m.bias is not None) for m in linears] == [
        (4, 8, True), (8, 8, True), (8, 2, False), (2, 10, True)]
    # the first three layers are drawn as in the full model: same seed, same weights
    full = tm.build_policy(hidden=8, seed=0)
    assert torch.equal(full.net[0].weight, policy.net[0].weight) and torch.equal(full.net[2].weight, policy.net[2].weight)
    stacked = tm.StackedPolicy.stack([policy, tm.build_policy(hidden=8, seed=1, output_rank=2)])
    assert torch.allclose(stacked()[0], policy(), rtol=0, atol=1e-14)
    weight, bias = stacked.output_layer()
    assert weight.shape == (2, 10, 2) and bias.shape == (2, 10)


def _reference_fit(policy, target, steps, lr):
    """The per-run step 1 as it was before batching: one policy, its own Adam."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        (target * (target.log() - policy())).sum(-1).mean().backward()
        optimizer.step()


def _reference_train(policy, reference_logp, pairs, y_gen, loss_cfg, steps, lr):
    """The per-run step 2 as it was before batching (dppo.train.losses.preference_loss on one run's
    pairs, one Adam per run), parts kept in float64."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    params = list(policy.parameters())
    gen = y_gen[pairs.prompt]
    reference = tm.pair_logps(reference_logp[pairs.prompt], pairs.chosen, pairs.rejected, gen)
    rows = torch.arange(len(pairs))
    records = []
    for step in range(steps + 1):
        logp = policy()
        logp_rows = logp[pairs.prompt]
        loss, parts = preference_loss(tm.pair_logps(logp_rows, pairs.chosen, pairs.rejected, gen), reference, loss_cfg)
        grad_rows, *param_grads = torch.autograd.grad(loss, [logp_rows, *params])
        dloss_dprob = len(pairs) * grad_rows / logp_rows.detach().exp()
        record = {"step": step, "loss_value": float(loss.detach())}
        record.update({f"part_{k}": float(v) for k, v in parts.items() if k != "loss"})
        record.update({k: float(v) for k, v in tm.distribution_summary(logp).items()})
        record["grad_chosen"] = float(dloss_dprob[rows, pairs.chosen].abs().mean())
        record["grad_rejected"] = float(dloss_dprob[rows, pairs.rejected].abs().mean())
        finite = (
            bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in param_grads)
            and float(logp.detach().min()) > tm.UNDERFLOW_LOGP
        )
        record["diverged"] = not finite
        records.append(record)
        if step == steps or not finite:
            break
        for parameter, grad in zip(params, param_grads):
            parameter.grad = grad
        optimizer.step()
    return records


def _reference_run_all(settings, scenarios):
    frames = []
    for scenario in scenarios:
        for seed in settings.seeds:
            reference = tm.build_policy(settings.hidden, seed)
            _reference_fit(reference, tm.initial_distribution(scenario, settings.initial), settings.sft_steps, settings.sft_lr)
            with torch.no_grad():
                reference_logp = reference()
            pairs = tm.make_preference_pairs(settings.pairs_per_prompt, seed)
            for label, cfg in settings.losses.items():
                records = _reference_train(
                    copy.deepcopy(reference), reference_logp, pairs, tm.greedy_responses(reference_logp), cfg,
                    settings.steps, settings.lr,
                )
                frames.append(pd.DataFrame.from_records(records).assign(scenario=scenario.number, seed=seed, loss=label))
    return pd.concat(frames, ignore_index=True)


# lr 0.1 makes DPO underflow the rejected probabilities in S1 and minll's penalty run away in S2,
# at different steps per seed: runs stop at different steps while the others go on.
DIVERGING = st.ToySettings(
    seeds=(0, 1), hidden=16, sft_steps=100, steps=60, lr=0.1, pairs_per_prompt=3,
    losses={
        "dpo": LossSettings(name="dpo"),
        "minll": LossSettings(name="minll", alpha=5.0),
        "slic": LossSettings(name="slic"),
        "unll": LossSettings(name="unll", alpha=0.5, f="quadratic", unll_level="sequence"),
    },
)


def test_batched_runs_equal_the_per_run_loop():
    scenarios = tm.SCENARIOS[:2]
    runs, step1 = tt.run_all(DIVERGING, scenarios)
    expected = _reference_run_all(DIVERGING, scenarios)
    keys = ["scenario", "seed", "loss", "step"]
    assert runs[keys].equals(expected[keys])  # same runs, same lengths, same order
    last = runs.groupby(["scenario", "seed", "loss"], sort=False).last()
    assert last["diverged"].sum() >= 4 and not last["diverged"].all()
    assert set(last.loc[last["diverged"]].reset_index()["step"]) != {DIVERGING.steps}
    assert runs.groupby(["scenario", "seed", "loss"])["diverged"].sum().max() == 1  # only the last record
    # The batched matmuls round otherwise than the per-run ones on some CPUs: each step moves a
    # log-prob by at most one rounding per layer of its sums (gamma_{hidden+1}) of its magnitude,
    # which is also the relative change of a probability; first order, over every step.
    logp_scale = expected.filter(like="logp").abs().max().max()
    rtol = (DIVERGING.steps + 1) * N_LAYERS * gamma(DIVERGING.hidden + 1, U64) * max(1.0, logp_scale)
    pd.testing.assert_frame_equal(runs[expected.columns], expected, check_exact=False, rtol=rtol, atol=0)
    assert len(step1) == 4 and step1["step1_kl"].max() < 1e-3


def test_same_seed_gives_identical_numbers_and_another_seed_does_not():
    first, step1 = tt.run_all(SMALL, tm.SCENARIOS[1:2])
    again, step1_again = tt.run_all(SMALL, tm.SCENARIOS[1:2])
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    pd.testing.assert_frame_equal(step1, step1_again, check_exact=True)
    other, _ = tt.run_all(dataclasses.replace(SMALL, seeds=(1,)), tm.SCENARIOS[1:2])
    assert not first["p_chosen"].equals(other["p_chosen"])
    assert set(first["loss"]) == {"dpo", "minll"}
    assert len(first) == 2 * (SMALL.steps + 1)
    # a run's numbers do not depend on which other runs share its batch
    both, _ = tt.run_all(dataclasses.replace(SMALL, seeds=(1, 0)), tm.SCENARIOS[1:2])
    pd.testing.assert_frame_equal(both[both["seed"] == 0].reset_index(drop=True), first, check_exact=True)


def test_a_runaway_penalty_is_stopped_and_flagged():
    # Scenario 2 (chosen less likely than rejected, so r < 0 and the minll penalty fires) with a
    # large alpha and step size: minll's alpha f(r) log pi(y_gen) is unbounded below and log pi
    # of y_gen underflows float64 within a few dozen steps; DPO on the same set-up does not.
    settings = dataclasses.replace(
        DIVERGING, seeds=(0,), sft_steps=300,
        losses={"minll": LossSettings(name="minll", alpha=5.0), "dpo": LossSettings(name="dpo")},
    )
    runs, _ = tt.run_all(settings, tm.SCENARIOS[1:2])
    runaway, dpo = runs[runs["loss"] == "minll"], runs[runs["loss"] == "dpo"]
    assert len(runaway) < 61 and runaway["diverged"].iloc[-1] and not runaway["diverged"].iloc[:-1].any()
    assert runaway["part_logp_gen"].iloc[-1] < runaway["part_logp_gen"].iloc[0] - 100
    assert len(dpo) == 61 and not dpo["diverged"].any()


def test_a_stopped_run_is_not_updated_again():
    # two copies of one set-up, one with a runaway penalty: it stops, and its parameters then
    # stay as they were while the other run's go on changing.
    policy = tm.build_policy(16, seed=0)
    stacked = tm.StackedPolicy.stack([policy, policy])
    tm.fit_distribution(stacked, tm.initial_distribution(tm.SCENARIOS[1], st.InitialLevels())[None].expand(2, -1, -1), 300, 1e-2)
    with torch.no_grad():
        reference_logp = stacked()
    pairs = tm.PreferencePairs.stack([tm.make_preference_pairs(3, seed=0)] * 2)
    losses = [LossSettings(name="minll", alpha=5.0), LossSettings(name="dpo")]
    runs = tt.train_runs(stacked, reference_logp, pairs, tm.greedy_responses(reference_logp), losses, steps=60, lr=0.1)
    stopped = runs[runs["run"] == 0]
    assert stopped["diverged"].iloc[-1] and len(stopped) < 61
    assert len(runs[runs["run"] == 1]) == 61
    with torch.no_grad():
        final = stacked()
    # the stopped run's final parameters are those of its last (diverged) record
    assert float(tm.distribution_summary(final)["p_chosen"][0]) == stopped["p_chosen"].iloc[-1]
    assert float(tm.distribution_summary(final)["p_chosen"][1]) != runs[runs["run"] == 1]["p_chosen"].iloc[-2]


def test_unseen_output_rows_get_no_gradient_from_a_margin_only_loss():
    # One-token responses: dL/dlogits = c (e_l - e_w) when L depends on log pi(y_w) - log pi(y_l)
    # only, so responses 8, 9 (in no pair) keep their output-layer rows; a lone log pi(y_w) term
    # (slic) or unequal flex betas move them.
    settings = dataclasses.replace(
        SMALL, seeds=(0,), steps=15,
        losses={
            "dpo": LossSettings(name="dpo"),
            "ipo": LossSettings(name="ipo"),
            "flex_equal": LossSettings(name="flex_dpo", beta_w=0.1, beta_l=0.1),
            "flex": LossSettings(name="flex_dpo", beta_w=0.1, beta_l=0.05),
            "slic": LossSettings(name="slic"),
            "dpo_sft": LossSettings(name="dpo_sft"),
        },
    )
    runs, _ = tt.run_all(settings, tm.SCENARIOS[:1])
    change = runs.groupby("loss")[["out_change_unseen", "out_change_rejected", "out_change_chosen"]].max()
    for loss in ("dpo", "ipo", "flex_equal"):
        # zero up to float rounding, which Adam's division by sqrt(v) + eps scales up
        assert change.loc[loss, "out_change_unseen"] < ts.FIXED_RATIO * change.loc[loss, "out_change_rejected"]
    for loss in ("flex", "slic", "dpo_sft"):
        assert change.loc[loss, "out_change_unseen"] > 1e-3
    assert (change["out_change_chosen"] > 1e-3).all()
    assert runs.groupby("loss")["out_change_unseen"].first().eq(0).all()  # step 0 is the start
    rows = ts.output_row_table(runs, settings.losses)
    assert rows.set_index("loss")["predicted_fixed"].to_dict() == {
        "dpo": True, "ipo": True, "flex_equal": True, "flex": False, "slic": False, "dpo_sft": False}
    assert (rows["predicted_fixed"] == rows["unseen_fixed"]).all()


def test_margin_only_losses():
    assert ts.margin_only(LossSettings(name="dpo"), f_r_positive=True)
    assert ts.margin_only(LossSettings(name="ipo"), f_r_positive=True)
    assert not ts.margin_only(LossSettings(name="slic"), f_r_positive=False)
    assert not ts.margin_only(LossSettings(name="dpo_sft"), f_r_positive=False)
    assert ts.margin_only(LossSettings(name="flex_dpo", beta=0.2, beta_w=0.2), f_r_positive=False)
    assert not ts.margin_only(LossSettings(name="flex_dpo", beta_w=0.2, beta_l=0.1), f_r_positive=False)
    for name in ("minll", "unll", "conll"):  # dpo while the penalty is off
        assert ts.margin_only(LossSettings(name=name), f_r_positive=False)
        assert not ts.margin_only(LossSettings(name=name), f_r_positive=True)
    assert ts.OUTPUT_ROWS == tuple(tt.OUTPUT_ROWS)


def test_settings_from_config_name_the_bad_key():
    settings = st.ToySettings.from_dict(
        {"seeds": [4, 5], "steps": 7, "losses": {"flex": {"loss": "flex_dpo", "beta_w": 0.1, "beta_l": 0.05}},
         "dynamics_loss": "flex"}
    )
    assert settings.seeds == (4, 5) and settings.steps == 7
    assert settings.losses == {"flex": LossSettings(name="flex_dpo", beta_w=0.1, beta_l=0.05)}
    with pytest.raises(ValueError, match=r"config key toy\.losses\.bad\.loss: 'nope'"):
        st.ToySettings.from_dict({"losses": {"bad": {"loss": "nope"}}})
    with pytest.raises(ValueError, match=r"config key toy\.losses\.bad: unknown key\(s\) \['bta'\]"):
        st.ToySettings.from_dict({"losses": {"bad": {"loss": "dpo", "bta": 0.1}}})
    with pytest.raises(ValueError, match="stepz"):
        st.ToySettings.from_dict({"stepz": 3, "losses": {"dpo": {"loss": "dpo"}}})
    with pytest.raises(ValueError, match="toy.losses: name at least one loss"):
        st.ToySettings.from_dict({"losses": {}})
    with pytest.raises(ValueError, match="toy.dynamics_loss: 'ipo' is not a label of toy.losses"):
        st.ToySettings.from_dict({"losses": {"dpo": {"loss": "dpo"}}, "dynamics_loss": "ipo"})


def _hand_runs() -> pd.DataFrame:
    """Two seeds of one (scenario, loss) with hand-set curves: the chosen probability peaks at
    step 1 and falls, the rejected mass collapses, the outside mass dips and climbs back."""
    rows = []
    curves = {
        0: {"p_chosen": [0.3, 0.9, 0.6], "p_rejected": [0.4, 1e-3, 1e-8], "p_unseen": [0.1, 0.01, 0.02]},
        1: {"p_chosen": [0.3, 0.7, 0.5], "p_rejected": [0.4, 1e-7, 1e-9], "p_unseen": [0.1, 0.03, 0.04]},
    }
    for seed, curve in curves.items():
        for step in range(3):
            chosen, rejected = curve["p_chosen"][step], curve["p_rejected"][step]
            rows.append({
                "scenario": 1, "seed": seed, "loss": "dpo", "step": step,
                "p_chosen": chosen, "p_rejected": rejected, "p_unseen": curve["p_unseen"][step],
                "p_outside": 1 - chosen - rejected,
                "p_other_chosen": 1 - chosen - rejected - curve["p_unseen"][step], "grad_chosen": 1.0 + step, "grad_rejected": 10.0 ** step,
                "diverged": False,
            })
    return pd.DataFrame(rows)


def test_final_table_and_property_checks_by_hand():
    table = ts.final_table(_hand_runs())
    assert len(table) == 1
    row = table.iloc[0]
    assert row["p_chosen_peak_mean"] == pytest.approx(0.8)
    assert row["p_chosen_peak_sd"] == pytest.approx(0.1)
    assert row["peak_step_mean"] == 1
    assert row["p_chosen_final_mean"] == pytest.approx(0.55)
    assert row["p_rejected_final_mean"] == pytest.approx((1e-8 + 1e-9) / 2)
    assert row["rejected_collapse_step_mean"] == pytest.approx(1.5)  # seed 0 at step 2, seed 1 at 1
    assert row["grad_rejected_final_mean"] == 100.0
    assert row["n_seeds"] == 2 and row["n_diverged"] == 0
    checks = ts.property_checks(table).iloc[0]
    assert checks["rejected_decades"] == pytest.approx(math.log10(0.4 / 5.5e-9))
    assert checks["chosen_decades"] == pytest.approx(abs(math.log10(0.55 / 0.3)))
    assert checks["drastic_drop"] and checks["degradation"]
    assert checks["chosen_fall_after_peak"] == pytest.approx(0.25)
    # global reading (responses 9-10): 0.1 -> lowest 0.02 (seed means of each run's lowest) -> 0.03
    assert (checks["unseen_initial"], checks["unseen_min"], checks["unseen_final"]) == pytest.approx((0.1, 0.02, 0.03))
    assert checks["unseen_rise_from_min"] == pytest.approx(0.01)
    assert not checks["dispersion_unseen"]  # ends below its start, climbs back by 0.01 only
    # outside mass: seed 0 0.3, 0.099, 0.4; seed 1 0.3, 0.3, 0.5 -> min mean 0.1995, final mean 0.45
    assert checks["outside_rise_from_min"] == pytest.approx(0.45 - (0.099 + 0.3) / 2)
    assert checks["dispersion_outside"]


def test_dispersion_is_a_rise_above_the_start_or_a_climb_back_from_the_lowest_point():
    assert ts._dispersion(0.1, 0.05, 0.11, min_rise=0.05)  # ends above its start
    assert ts._dispersion(0.5, 0.01, 0.2, min_rise=0.05)  # climbs back by 0.19
    assert not ts._dispersion(0.5, 0.01, 0.05, min_rise=0.05)
    assert not ts._dispersion(0.1, 1e-20, 1e-18, min_rise=0.05)


def _hand_output_rows() -> pd.DataFrame:
    """Output-row changes of two losses in two scenarios, set by hand."""
    return pd.DataFrame({
        "scenario": [1, 1, 2, 2], "loss": ["dpo", "minll", "dpo", "minll"],
        "unseen_change": [1e-13, 1e-13, 2e-13, 0.3], "rejected_change": [0.5, 0.5, 0.4, 0.2],
        "chosen_change": [0.6, 0.6, 0.7, 0.5], "f_r_positive": [False, False, True, True],
        "predicted_fixed": [True, True, True, False], "unseen_fixed": [True, True, True, False],
    })


def test_output_row_latex():
    rows = _hand_output_rows()
    table = ts.final_table(_hand_runs())
    macros = ts.latex_macros(table, ts.property_checks(table), SMALL, rows)
    assert r"\newcommand{\toyScenTwoMinllOutChangeUnseen}{0.30}" in macros
    assert r"\newcommand{\toyScenOneDpoUnseenRowsFixed}{yes}" in macros
    assert r"\newcommand{\toyDpoOutChangeUnseenMax}{\ensuremath{2.0\times 10^{-13}}}" in macros
    assert r"\newcommand{\toyDpoOutChangeRejectedMin}{0.40}" in macros
    assert r"\newcommand{\toyMinllUnseenRowsPredictedFixedIn}{S1}" in macros
    assert r"\newcommand{\toyUnseenRowsAgree}{4}" in macros and r"\newcommand{\toyUnseenRowsCells}{4}" in macros
    names = [line.split("}")[0] for line in macros.splitlines() if line.startswith(r"\newcommand")]
    assert len(names) == len(set(names))
    tex = ts.latex_output_row_table(rows)
    assert r"minll & S1 & \ensuremath{1.0\times 10^{-13}} & 0.30 & 0.20 & 0.50 \\" in tex
    assert tex.count(r"\\") == 3  # header and two losses
    props = ts.latex_property_table(ts.property_checks(table))
    assert r"S1 & yes: 8 vs 0.26 & yes: 0.25 & no: 0.10 $\to$ 0.02 $\to$ 0.03 & yes:" in props


def test_latex_outputs():
    assert macro_name("toy", "dpo_sft") == "toyDpoSft" and macro_name("flex-dpo") == "flexDpo"
    assert latex_number(0.5549) == "0.55"
    assert latex_number(2.5e-9) == r"\ensuremath{2.5\times 10^{-9}}"
    assert latex_number(float("inf")) == r"\ensuremath{\infty}"
    table = ts.final_table(_hand_runs())
    macros = ts.latex_macros(table, ts.property_checks(table), SMALL)
    assert r"\newcommand{\toyScenOneDpoChosenPeak}{0.80}" in macros
    assert r"\newcommand{\toyScenOneDpoChosenPeakStep}{1}" in macros
    assert r"\newcommand{\toyScenOneDpoDegradation}{yes}" in macros
    assert r"\newcommand{\toyScenOneDpoDispersionUnseen}{no}" in macros
    assert r"\newcommand{\toyScenOneDpoUnseenMin}{0.02}" in macros
    assert r"\newcommand{\toyScenOneDpoUnseenRise}{\ensuremath{1.0\times 10^{-2}}}" in macros  # 0.03 - 0.02 < 0.01
    assert r"\newcommand{\toyMinllAlpha}{0.50}" in macros
    assert r"\newcommand{\toyDpoHighestPeakScenario}{1}" in macros
    names = [line.split("}")[0] for line in macros.splitlines() if line.startswith(r"\newcommand")]
    assert len(names) == len(set(names))  # LaTeX refuses a second \newcommand of one name
    tex = ts.latex_final_table(table)
    assert tex.startswith(r"\begin{tabular}") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"1 & dpo & 0.80 $\pm$ 0.10 & 0.55 $\pm$ 0.05 & \ensuremath{5.5\times 10^{-9}} $\pm$ 0.00" in tex


def test_seed_band_is_mean_and_sd_over_seeds():
    from dppo.toy import plots as toy_plots

    band = toy_plots.seed_band(_hand_runs(), "p_chosen")
    assert band["mean"].tolist() == pytest.approx([0.3, 0.8, 0.55])
    assert band["sd"].tolist() == pytest.approx([0.0, 0.1, 0.05])
    log_band = toy_plots.seed_band(_hand_runs(), "grad_rejected", log10=True)
    assert log_band["mean"].tolist() == pytest.approx([0.0, 1.0, 2.0])


def test_figures_draw_seed_bands_with_their_seeds_stated(tmp_path):
    from dppo.toy import plots as toy_plots

    runs = _hand_runs()
    band = toy_plots.seed_band(runs, "p_chosen")
    for name, plot in (
        ("dynamics", toy_plots.plot_dynamics(runs)),
        ("gradients", toy_plots.plot_gradients(runs)),
        ("grid", toy_plots.plot_grid(runs)),
    ):
        data = plot.data
        assert not data.duplicated(["panel", "series", "x"]).any()  # one curve per label and panel
        assert data["n_seeds"].eq(2).all() and data["panel_title"].str.endswith("(2 seeds)").all()
        assert ((data["low"] <= data["y"]) & (data["y"] <= data["high"])).all()
        if name != "gradients":  # the optimal response's curve is the seed mean, step by step
            chosen = data[data["series"] == toy_plots.CURVES[0][1]].drop_duplicates("x", keep="first")
            assert chosen["y"].tolist() == pytest.approx(band["mean"].tolist())
        paths = [tmp_path / f"{name}.{ext}" for ext in ("pdf", "png", "csv")]
        plot.save(*paths)
        assert paths[0].read_bytes().startswith(b"%PDF") and paths[1].read_bytes().startswith(b"\x89PNG")
        assert len(pd.read_csv(paths[2])) == len(data)


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY_TOY = {
    "seeds": [0, 1], "hidden": 8, "sft_steps": 50, "steps": 10, "lr": 0.01, "pairs_per_prompt": 2,
    "losses": {"dpo": {"loss": "dpo"}, "dpo_sft": {"loss": "dpo_sft", "sft_lambda": 0.1}},
}


@pytest.mark.slow
def test_toy_rules_build_every_output(tmp_path):
    import subprocess
    import sys

    import yaml

    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["toy"] = TINY_TOY
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        # the target first: --quiet takes any number of values
        [sys.executable, "-m", "snakemake", "toy", "--snakefile", str(ROOT / "Snakefile"), "--configfile", "config.yaml",
         "--cores", "1", "--quiet", "all"], cwd=tmp_path, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = pd.read_parquet(tmp_path / "results/toy/runs.parquet")
    assert len(runs) == 4 * 2 * 2 * 11  # scenarios x seeds x losses x (steps + 1)
    table = pd.read_csv(tmp_path / "results/tables/toy_final.csv")
    assert len(table) == 8 and set(table["n_seeds"]) == {2}
    macros = (tmp_path / "paper/tables/toy_macros.tex").read_text()
    assert r"\newcommand{\toySteps}{10}" in macros
    for name in ("toy_final", "toy_properties", "toy_output_rows"):
        assert (tmp_path / f"paper/tables/{name}.tex").read_text().startswith(r"\begin{tabular}")
    rows = pd.read_csv(tmp_path / "results/tables/toy_output_rows.csv")
    assert len(rows) == 8 and (rows["predicted_fixed"] == rows["unseen_fixed"]).all()
    assert r"\newcommand{\toyDpoOutChangeUnseenMax}" in macros
    for name in ("toy_dynamics", "toy_gradients", "toy_grid"):
        assert (tmp_path / f"paper/figures/{name}.pdf").stat().st_size > 0
        assert set(pd.read_csv(tmp_path / f"paper/figures/{name}.csv")["n_seeds"]) == {2}
    assert (tmp_path / "logs/toy/toy_run.log").read_text().count("step-1 KL") == 8


def test_toy_text_states_where_penalties_fire_from_the_runs():
    """Real toy runs (DPO and minll, four scenarios): the generated lists of where the penalty
    fires, where it equals DPO, and where each property holds are those of the run's tables."""
    runs, _ = tt.run_all(SMALL)
    table = ts.final_table(runs)
    checks = ts.property_checks(table)
    rows = ts.output_row_table(runs, SMALL.losses)
    cells = ts.penalty_cells(table, rows, SMALL).set_index("scenario")
    fired = rows.set_index(["scenario", "loss"])["f_r_positive"]
    assert cells["fires"].tolist() == [bool(fired[(n, "minll")]) for n in cells.index]
    for n, cell in cells.iterrows():  # a penalty that never fires leaves DPO's runs bit for bit
        mine, dpo = (runs[(runs["scenario"] == n) & (runs["loss"] == loss)].drop(columns="loss").reset_index(drop=True)
                     for loss in ("minll", "dpo"))
        assert cell["equals_dpo"] == mine.filter(like="p_").equals(dpo.filter(like="p_"))
        if not cell["fires"]:
            assert cell["equals_dpo"]
    macros = dict(re.findall(r"\\newcommand\{\\(\w+)\}\{(.*)\}", ts.latex_macros(table, checks, SMALL, rows)))
    assert macros["toyPenaltiesFireWhere"] == ts._where(cells.index[cells["fires"]])
    assert macros["toyPenaltiesEqualDpoWhere"] == ts._where(cells.index[cells["equals_dpo"]])
    for column in ts.PROPERTY_WORDS:
        assert macros[macro_name("toyDpo", column, "Where")] == ts._where(checks.loc[checks[column], "scenario"])
        assert f"{ts.PROPERTY_WORDS[column]} {ts._where(checks.loc[checks[column], 'scenario'])}" in \
            macros["toyAbstractSentence"]
    assert f"fire {macros['toyPenaltiesFireWhere']}" in macros["toyPenaltySentence"]


def test_reference_argmax_ties_in_the_off_policy_chosen_scenarios():
    """Chosen off-policy (S2, S4): the five responses outside the pairs share the reference's
    highest probability, so y_gen is a tie-break; chosen on-policy: y_gen is y_w itself."""
    argmax = ts.reference_argmax(SMALL).set_index("scenario")
    for scenario in tm.SCENARIOS:
        target = tm.initial_distribution(scenario, SMALL.initial)[0]
        top = int((target == target.max()).sum())
        assert argmax.loc[scenario.number, "tied"] == top
        assert argmax.loc[scenario.number, "is_optimal"] == (top == 1 and int(target.argmax()) == tm.CHOSEN_IDS[0])
    assert argmax["is_optimal"].tolist() == [True, False, True, False]


def test_where_lists_scenarios_in_words():
    assert ts._where([1, 2, 3, 4]) == "in all four scenarios" and ts._where([]) == "in no scenario"
    assert ts._where([2]) == "in S2" and ts._where([4, 1, 3]) == "in S1, S3 and S4"
