"""Loss library: hand-computed values, gradients, stability, degenerate cases, validation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from dppo import settings as st
from dppo.config import load_yaml, validate_config
from dppo.evaluate import run_selection
from dppo.settings import FieldError, LossSettings
from dppo.train.losses import (
    LOSSES,
    PENALTY_WEIGHTS,
    WEIGHTINGS,
    ResponseLogps,
    check_registry,
    get_loss,
    gradient_weights,
    log1mexp,
    loss_minll,
    loss_terms,
    preference_loss,
    unlikelihood_term,
    weight_minll,
    weighting,
)

ROOT = Path(__file__).resolve().parents[1]

F_NAMES = tuple(WEIGHTINGS)
PENALIZED = ("minll", "unll", "conll")


def softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x), the DPO loss of logit -x, by hand."""
    return math.log1p(math.exp(x))


def logps(chosen, rejected, gen=None, chosen_len=None, rejected_len=None, gen_tokens=None, requires_grad=False):
    """A ResponseLogps in float64 from plain lists (gen_tokens: ragged per-token lists)."""

    def t(values):
        return None if values is None else torch.tensor(values, dtype=torch.float64, requires_grad=requires_grad)

    n = len(chosen)
    token_logps = token_mask = None
    if gen_tokens is not None:
        width = max(len(row) for row in gen_tokens)
        # Padding holds 0.0 (= a token of probability 1): the loss must ignore it.
        token_logps = t([row + [0.0] * (width - len(row)) for row in gen_tokens])
        token_mask = torch.tensor([[i < len(row) for i in range(width)] for row in gen_tokens])
    return ResponseLogps(
        chosen=t(chosen),
        rejected=t(rejected),
        chosen_len=torch.tensor(chosen_len or [1] * n),
        rejected_len=torch.tensor(rejected_len or [1] * n),
        gen=t(gen),
        gen_len=None if gen is None else torch.tensor([1] * n),
        gen_token_logps=token_logps,
        gen_token_mask=token_mask,
    )


# Three rows: r = +2, r = -2, r = 0 (the kink) with D = (D_w, D_l, D_gen) =
# (1, -1, 1), (-1, 1, 1) and (0, 0, 0).
def hand_batch(requires_grad=False):
    policy = logps(
        [-10.0, -14.0, -12.0],
        [-12.0, -12.0, -12.0],
        gen=[-5.0, -3.0, -8.0],
        gen_tokens=[[-1.0, -4.0], [-0.5, -0.5, -2.0], [-8.0]],
        requires_grad=requires_grad,
    )
    reference = logps([-11.0, -13.0, -12.0], [-11.0, -13.0, -12.0], gen=[-6.0, -4.0, -8.0])
    return policy, reference


# DPO of the three rows at beta = 0.1: logits beta (D_w - D_l) = 0.2, -0.2, 0.
DPO_ROWS = [0.5981388693815918, 0.7981388693815918, 0.6931471805599453]
R_ROWS = [2.0, -2.0, 0.0]
GEN_ROWS = [-5.0, -3.0, -8.0]
D_GEN_ROWS = [1.0, 1.0, 0.0]
GEN_TOKEN_ROWS = [[-1.0, -4.0], [-0.5, -0.5, -2.0], [-8.0]]

# f(r) for r = -4, -0.25, 0, +3 (expectile at zeta = 0.3), written out by hand.
F_BY_HAND = {
    "linear": [4.0, 0.25, 0.0, 0.0],
    "quadratic": [16.0, 0.0625, 0.0, 0.0],
    "sqrt": [2.0, 0.5, 0.0, 0.0],
    "expectile": [0.7 * 16.0, 0.7 * 0.0625, 0.0, 0.3 * 9.0],
}


@pytest.mark.parametrize("name", F_NAMES)
def test_weightings_by_hand(name):
    r = torch.tensor([-4.0, -0.25, 0.0, 3.0], dtype=torch.float64)
    assert weighting(name)(r, 0.3).tolist() == pytest.approx(F_BY_HAND[name], abs=1e-12)


@pytest.mark.parametrize("name", F_NAMES)
def test_weightings_are_zero_at_the_kink_including_negative_zero(name):
    r = torch.tensor([0.0, -0.0], dtype=torch.float64)
    assert weighting(name)(r, 0.7).tolist() == [0.0, 0.0]


def test_expectile_is_symmetric_at_zeta_half_and_never_negative():
    r = torch.tensor([-3.0, 3.0], dtype=torch.float64)
    assert weighting("expectile")(r, 0.5).tolist() == [4.5, 4.5]
    assert weighting("expectile")(r, 0.0).tolist() == [9.0, 0.0]
    assert weighting("expectile")(r, 1.0).tolist() == [0.0, 9.0]


def test_dpo_by_hand():
    policy, reference = hand_batch()
    loss, parts = preference_loss(policy, reference, LossSettings(name="dpo", beta=0.1))
    assert loss.item() == pytest.approx(sum(DPO_ROWS) / 3, abs=1e-12)
    assert parts["dpo"].item() == pytest.approx(loss.item(), abs=1e-15)
    assert parts["penalty"].item() == 0.0


def per_row_penalized(name, f_rows, alpha, beta=0.1):
    """Hand formulas of the three DPPO losses for the rows of `hand_batch`."""
    rows = []
    for i in range(3):
        if name == "minll":
            rows.append(DPO_ROWS[i] + alpha * f_rows[i] * GEN_ROWS[i])
        elif name == "unll":
            unlikely = -sum(math.log(1.0 - math.exp(lp)) for lp in GEN_TOKEN_ROWS[i])
            rows.append(DPO_ROWS[i] + alpha * f_rows[i] * unlikely)
        else:  # conll: -log sigma(z - alpha beta f D_gen) = softplus(-(z - ...))
            z = [0.2, -0.2, 0.0][i]
            rows.append(softplus(-(z - alpha * beta * f_rows[i] * D_GEN_ROWS[i])))
    return rows


@pytest.mark.parametrize("f", F_NAMES)
@pytest.mark.parametrize("name", PENALIZED)
def test_penalized_losses_by_hand(name, f):
    zeta, alpha = 0.3, 0.5
    f_rows = weighting(f)(torch.tensor(R_ROWS, dtype=torch.float64), zeta).tolist()
    policy, reference = hand_batch()
    loss, parts = preference_loss(policy, reference, LossSettings(name=name, f=f, alpha=alpha, zeta=zeta))
    expected = per_row_penalized(name, f_rows, alpha)
    assert loss.item() == pytest.approx(sum(expected) / 3, abs=1e-12)
    assert parts["dpo"].item() == pytest.approx(sum(DPO_ROWS) / 3, abs=1e-12)
    assert parts["penalty"].item() == pytest.approx((sum(expected) - sum(DPO_ROWS)) / 3, abs=1e-12)


def test_a_few_penalized_rows_written_out():
    # Row 1 (r = -2, linear f = 2, alpha = 0.5), fully by hand:
    policy, reference = hand_batch()
    minll_rows = per_row_penalized("minll", [0.0, 2.0, 0.0], 0.5)
    assert minll_rows[1] == pytest.approx(0.7981388693815918 + 0.5 * 2 * (-3.0))
    conll_rows = per_row_penalized("conll", [0.0, 2.0, 0.0], 0.5)
    assert conll_rows[1] == pytest.approx(math.log1p(math.exp(0.3)))  # logit -0.2 - 0.1
    unll_rows = per_row_penalized("unll", [0.0, 2.0, 0.0], 0.5)
    assert unll_rows[1] == pytest.approx(
        0.7981388693815918 - 0.5 * 2 * (2 * math.log(1 - math.exp(-0.5)) + math.log(1 - math.exp(-2.0)))
    )
    # ... and the library agrees with those rows (rows 0 and 2 have f = 0 under linear).
    for name, rows in (("minll", minll_rows), ("conll", conll_rows), ("unll", unll_rows)):
        loss, _ = preference_loss(policy, reference, LossSettings(name=name, f="linear", alpha=0.5))
        assert loss.item() == pytest.approx(sum(rows) / 3, abs=1e-12)


def test_sequence_level_unlikelihood_by_hand():
    policy, reference = hand_batch()
    cfg = LossSettings(name="unll", f="linear", alpha=0.5, unll_level="sequence")
    loss, _ = preference_loss(policy, reference, cfg)
    row1 = 0.7981388693815918 - 0.5 * 2.0 * math.log(1.0 - math.exp(-3.0))
    assert loss.item() == pytest.approx((DPO_ROWS[0] + row1 + DPO_ROWS[2]) / 3, abs=1e-12)


def test_implicit_trigger_is_beta_times_margin():
    policy, reference = hand_batch()
    cfg = LossSettings(name="minll", f="linear", alpha=1.0, beta=0.1, r_mode="implicit")
    loss, parts = preference_loss(policy, reference, cfg)
    # implicit r = 0.1 * (D_w - D_l) = 0.2, -0.2, 0 -> f = 0, 0.2, 0
    assert parts["r"].item() == pytest.approx(0.0, abs=1e-15)
    assert parts["f_r"].item() == pytest.approx(0.2 / 3, abs=1e-12)
    assert loss.item() == pytest.approx((DPO_ROWS[0] + DPO_ROWS[1] + 0.2 * -3.0 + DPO_ROWS[2]) / 3, abs=1e-12)


def test_logged_parts_by_hand():
    policy, reference = hand_batch()
    _, parts = preference_loss(policy, reference, LossSettings(name="minll", f="quadratic", alpha=0.1, beta=0.5))
    expected = {
        "reward_chosen": 0.5 * (1 - 1 + 0) / 3,
        "reward_rejected": 0.5 * (-1 + 1 + 0) / 3,
        "margin": 0.5 * (2 - 2 + 0) / 3,
        "reward_gen": 0.5 * (1 + 1 + 0) / 3,
        "r": 0.0,
        "f_r": 4.0 / 3,
        "frac_r_neg": 1 / 3,
        "reward_acc": 1 / 3,  # row 0 only; the tie in row 2 is not a win
        "logp_chosen": -12.0,
        "logp_rejected": -12.0,
        "logp_gen": -16.0 / 3,
        "penalty": 0.1 * 4.0 * -3.0 / 3,
    }
    for key, value in expected.items():
        assert parts[key].item() == pytest.approx(value, abs=1e-12), key
    assert all(not part.requires_grad for part in parts.values())
    assert parts["loss"].dim() == 0


def test_gen_parts_only_when_gen_given():
    policy, reference = hand_batch()
    policy = dataclasses.replace(policy, gen=None, gen_token_logps=None, gen_token_mask=None)
    _, parts = preference_loss(policy, reference, LossSettings(name="dpo"))
    assert "reward_gen" not in parts and "logp_gen" not in parts


def test_ipo_uses_length_averaged_log_probs():
    policy = logps([-10.0], [-12.0], chosen_len=[4], rejected_len=[2])
    reference = logps([-12.0], [-10.0], chosen_len=[4], rejected_len=[2])
    loss, _ = preference_loss(policy, reference, LossSettings(name="ipo", tau=0.1))
    # (2/4 - (-2/2) - 1/(2*0.1))^2 = (1.5 - 5)^2
    assert loss.item() == pytest.approx(12.25, abs=1e-12)


def test_slic_hinge_and_regularizer():
    policy = logps([-10.0, -12.0], [-12.0, -10.0])
    reference = logps([-1.0, -1.0], [-1.0, -1.0])  # SLiC ignores the reference
    loss, parts = preference_loss(policy, reference, LossSettings(name="slic", slic_delta=1.0, slic_lambda=0.1))
    # row 0: max(0, 1 + 10 - 12) + 1.0 = 1.0; row 1: max(0, 1 + 12 - 10) + 1.2 = 4.2
    assert loss.item() == pytest.approx((1.0 + 4.2) / 2, abs=1e-12)
    assert parts["penalty"].item() == pytest.approx((1.0 + 1.2) / 2, abs=1e-12)


def test_flex_dpo_by_hand():
    policy = logps([-10.0], [-12.0])
    reference = logps([-11.0], [-11.0])
    loss, _ = preference_loss(policy, reference, LossSettings(name="flex_dpo", beta_w=0.2, beta_l=0.05))
    assert loss.item() == pytest.approx(math.log1p(math.exp(-(0.2 * 1 + 0.05 * 1))), abs=1e-12)


def test_dpo_sft_adds_mean_token_nll_of_chosen():
    policy = logps([-10.0], [-12.0], chosen_len=[4], rejected_len=[3])
    reference = logps([-11.0], [-11.0], chosen_len=[4], rejected_len=[3])
    loss, parts = preference_loss(policy, reference, LossSettings(name="dpo_sft", sft_lambda=0.1))
    assert loss.item() == pytest.approx(0.5981388693815918 + 0.1 * 10.0 / 4, abs=1e-12)
    assert parts["penalty"].item() == pytest.approx(0.25, abs=1e-12)


# ----------------------------------------------------------------------- gradients


def grads(name, f="linear", alpha=0.5, **kwargs):
    policy, reference = hand_batch(requires_grad=True)
    loss, _ = preference_loss(policy, reference, LossSettings(name=name, f=f, alpha=alpha, **kwargs))
    loss.backward()
    return policy


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_dpo_gradient_matches_the_seed_formula():
    # grad L = -beta sigma(r_l - r_w) [grad logp(y_w) - grad logp(y_l)], r = beta D, mean over B.
    beta = 0.1
    policy = grads("dpo", beta=beta)
    d_w, d_l = [1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]
    weight = [beta * sigmoid(beta * d_l[i] - beta * d_w[i]) / 3 for i in range(3)]
    assert policy.chosen.grad.tolist() == pytest.approx([-w for w in weight], abs=1e-14)
    assert policy.rejected.grad.tolist() == pytest.approx(weight, abs=1e-14)
    assert policy.gen.grad is None or not policy.gen.grad.any()


@pytest.mark.parametrize("f", F_NAMES)
@pytest.mark.parametrize("name", ("minll", "unll"))
def test_minll_unll_penalty_moves_only_y_gen(name, f):
    dpo = grads("dpo")
    penalized = grads(name, f=f, zeta=0.3)
    # r and f(r) are detached: chosen/rejected get exactly the DPO gradient.
    assert torch.equal(penalized.chosen.grad, dpo.chosen.grad)
    assert torch.equal(penalized.rejected.grad, dpo.rejected.grad)
    f_rows = weighting(f)(torch.tensor(R_ROWS, dtype=torch.float64), 0.3).tolist()
    if name == "minll":
        # d/d logp_gen of alpha f logp_gen / B: positive, so descent lowers logp(y_gen).
        assert penalized.gen.grad.tolist() == pytest.approx([0.5 * fr / 3 for fr in f_rows], abs=1e-14)
    else:
        # d/dx of -log(1 - e^x) = e^x / (1 - e^x): every real y_gen token is pushed down.
        expected = [
            [0.5 * f_rows[i] / 3 * math.exp(x) / (1 - math.exp(x)) for x in row] + [0.0] * (3 - len(row))
            for i, row in enumerate(GEN_TOKEN_ROWS)
        ]
        for got, want in zip(penalized.gen_token_logps.grad.tolist(), expected):
            assert got == pytest.approx(want, abs=1e-14)
    assert f_rows[1] > 0  # the wrongly ranked row is penalized under every f


@pytest.mark.parametrize("f", F_NAMES)
def test_conll_lowers_d_gen_and_keeps_dpo_weighting(f):
    beta, alpha, zeta = 0.1, 0.5, 0.3
    policy = grads("conll", f=f, alpha=alpha, beta=beta, zeta=zeta)
    f_rows = weighting(f)(torch.tensor(R_ROWS, dtype=torch.float64), zeta).tolist()
    z = [0.2, -0.2, 0.0]
    # L = softplus(-u), u = beta (D_w - D_l) - alpha beta f D_gen; dL/du = -sigma(-u)
    for i in range(3):
        u = z[i] - alpha * beta * f_rows[i] * D_GEN_ROWS[i]
        weight = sigmoid(-u) / 3
        assert policy.chosen.grad[i].item() == pytest.approx(-beta * weight, abs=1e-14)
        assert policy.rejected.grad[i].item() == pytest.approx(beta * weight, abs=1e-14)
        assert policy.gen.grad[i].item() == pytest.approx(alpha * beta * f_rows[i] * weight, abs=1e-14)
    assert policy.gen.grad[1].item() > 0  # descent lowers D(y_gen) of the wrongly ranked row


def test_penalty_step_lowers_y_gen_on_a_categorical_policy():
    # The toy model's setting: 10 responses, each a single token of a categorical.
    torch.manual_seed(0)
    ref_logits = torch.randn(10, dtype=torch.float64)
    y_w, y_l, y_gen = 2, 5, int(ref_logits.argmax())
    assert y_gen not in (y_w, y_l)
    start = ref_logits.clone()
    start[y_w], start[y_l] = start[y_l] - 1.0, start[y_w] + 1.0  # wrongly ranked: r < 0
    ref_lp = ref_logits.log_softmax(-1)

    def stepped_gen_logp(name):
        logits = start.clone().requires_grad_(True)
        lp = logits.log_softmax(-1)
        policy = ResponseLogps(
            lp[[y_w]], lp[[y_l]], torch.ones(1), torch.ones(1), gen=lp[[y_gen]],
            gen_token_logps=lp[[y_gen]].unsqueeze(1), gen_token_mask=torch.ones(1, 1, dtype=torch.bool),
        )
        reference = ResponseLogps(ref_lp[[y_w]], ref_lp[[y_l]], torch.ones(1), torch.ones(1), gen=ref_lp[[y_gen]])
        loss, parts = preference_loss(policy, reference, LossSettings(name=name, alpha=1.0, beta=0.5))
        assert parts["frac_r_neg"].item() == 1.0
        loss.backward()
        with torch.no_grad():
            return (logits - 1.0 * logits.grad).log_softmax(-1)[y_gen].item()

    dpo_gen = stepped_gen_logp("dpo")
    for name in PENALIZED:
        assert stepped_gen_logp(name) < dpo_gen, name


def test_trigger_carries_no_gradient():
    from dppo.train.losses import loss_terms

    policy, reference = hand_batch(requires_grad=True)
    terms = loss_terms(policy, reference, LossSettings(name="unll", f="quadratic", alpha=1.0))
    assert not terms.r.requires_grad and not terms.f_r.requires_grad
    assert terms.d_chosen.requires_grad


# ----------------------------------------------------------------------- stability


@pytest.mark.parametrize("name", tuple(LOSSES))
@pytest.mark.parametrize("scale", ("near_zero", "very_negative"))
def test_extreme_log_probs_give_finite_loss_and_gradient(name, scale):
    if scale == "near_zero":
        pol_w, pol_l, pol_g, tokens = -1e-7, -3e-7, -2e-7, [-1e-7, -1e-9]
    else:
        pol_w, pol_l, pol_g, tokens = -1e4, -0.5e4, -2e4, [-1e4, -5e3]
    for dtype in (torch.float32, torch.float64):
        policy = ResponseLogps(
            torch.tensor([pol_w], dtype=dtype, requires_grad=True),
            torch.tensor([pol_l], dtype=dtype, requires_grad=True),
            torch.tensor([3]), torch.tensor([3]),
            gen=torch.tensor([pol_g], dtype=dtype, requires_grad=True),
            gen_token_logps=torch.tensor([tokens], dtype=dtype, requires_grad=True),
            gen_token_mask=torch.ones(1, 2, dtype=torch.bool),
        )
        reference = ResponseLogps(
            torch.tensor([-2e4], dtype=dtype), torch.tensor([-1e-6], dtype=dtype),
            torch.tensor([3]), torch.tensor([3]), gen=torch.tensor([-1e-6], dtype=dtype),
        )
        for f in F_NAMES:
            cfg = LossSettings(name=name, f=f, alpha=2.0, beta=0.1)
            loss, parts = preference_loss(policy, reference, cfg)
            loss.backward()
            assert torch.isfinite(loss), (dtype, f)
            assert all(torch.isfinite(p) for p in parts.values()), (dtype, f)
            for tensor in (policy.chosen, policy.rejected, policy.gen, policy.gen_token_logps):
                if tensor.grad is not None:
                    assert torch.isfinite(tensor.grad).all(), (dtype, f)
                    tensor.grad = None


@pytest.mark.parametrize("level", ("token_sum", "token_mean", "sequence"))
def test_unlikelihood_at_probability_one_is_finite_and_still_pushes_down(level):
    # A y_gen token (or sequence) of probability 1 exactly: the clamp keeps -log(1-p) finite
    # and the straight-through gradient still lowers it.
    policy = logps([-14.0], [-12.0], gen=[0.0], gen_tokens=[[0.0, -1e-12]], requires_grad=True)
    reference = logps([-13.0], [-13.0], gen=[-1.0])
    loss, _ = preference_loss(policy, reference, LossSettings(name="unll", alpha=1.0, unll_level=level))
    loss.backward()
    assert torch.isfinite(loss)
    grad = policy.gen.grad if level == "sequence" else policy.gen_token_logps.grad
    assert torch.isfinite(grad).all() and (grad > 0).all()
    # bounded by the clamp: at most alpha f (1-eps)/eps with eps = 1e-5
    assert grad.max().item() <= 2.0 / 1e-5


def test_unll_ignores_nan_in_padding():
    policy, reference = hand_batch(requires_grad=False)
    clean, _ = preference_loss(policy, reference, LossSettings(name="unll", alpha=1.0))
    dirty_tokens = policy.gen_token_logps.clone()
    dirty_tokens[~policy.gen_token_mask] = float("nan")
    dirty_tokens.requires_grad_(True)
    dirty = dataclasses.replace(policy, gen_token_logps=dirty_tokens)
    loss, _ = preference_loss(dirty, reference, LossSettings(name="unll", alpha=1.0))
    loss.backward()
    assert loss.item() == clean.item()
    assert torch.isfinite(dirty_tokens.grad).all()


def test_log1mexp_matches_naive_formula_where_that_is_accurate():
    x = torch.tensor([-1e-3, -0.1, -0.69, -0.7, -2.0], dtype=torch.float64)
    naive = torch.log(1 - torch.exp(x))
    assert torch.allclose(log1mexp(x), naive, rtol=1e-10, atol=0)
    # far left, log(1 - e^x) = -e^x - e^2x/2 - ... where the naive 1 - e^x loses digits:
    assert log1mexp(torch.tensor([-30.0], dtype=torch.float64)).item() == pytest.approx(-math.exp(-30.0), rel=1e-12)
    # and near 0, where the naive float32 formula rounds 1 - e^x to 0:
    tiny = torch.tensor([-1e-9], dtype=torch.float32)
    assert log1mexp(tiny).item() == pytest.approx(math.log(1e-9), rel=1e-6)


def test_half_precision_inputs_are_upcast():
    policy, reference = hand_batch()
    half = ResponseLogps(
        policy.chosen.bfloat16(), policy.rejected.bfloat16(), policy.chosen_len, policy.rejected_len,
        gen=policy.gen.bfloat16(),
    )
    ref_half = dataclasses.replace(reference, chosen=reference.chosen.bfloat16(),
                                   rejected=reference.rejected.bfloat16(), gen=reference.gen.bfloat16())
    loss, _ = preference_loss(half, ref_half, LossSettings(name="conll", alpha=0.5))
    assert loss.dtype == torch.float32


# ----------------------------------------------------------------- degenerate cases


@pytest.mark.parametrize("f", F_NAMES)
@pytest.mark.parametrize("name", PENALIZED)
@pytest.mark.parametrize("r_mode", ("policy", "implicit"))
def test_alpha_zero_is_exactly_dpo(name, f, r_mode):
    results = {}
    for loss_name in ("dpo", name):
        policy, reference = hand_batch(requires_grad=True)
        loss, _ = preference_loss(policy, reference, LossSettings(name=loss_name, f=f, alpha=0.0, r_mode=r_mode))
        loss.backward()
        results[loss_name] = (loss, policy.chosen.grad, policy.rejected.grad)
    for dpo_value, penalized_value in zip(results["dpo"], results[name]):
        assert torch.equal(dpo_value, penalized_value)


@pytest.mark.parametrize("beta_w, beta_l", ((None, None), (0.1, 0.1)))
def test_flex_dpo_with_equal_betas_is_exactly_dpo(beta_w, beta_l):
    policy, reference = hand_batch()
    dpo, _ = preference_loss(policy, reference, LossSettings(name="dpo", beta=0.1))
    flex, _ = preference_loss(policy, reference, LossSettings(name="flex_dpo", beta=0.1, beta_w=beta_w, beta_l=beta_l))
    assert torch.equal(dpo, flex)


# ----------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"name": "kto"}, "name"),
        ({"f": "cubic"}, "f"),
        ({"r_mode": "reference"}, "r_mode"),
        ({"unll_level": "word"}, "unll_level"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"beta": 0.0}, "beta"),
        ({"beta": -1.0}, "beta"),
        ({"zeta": -0.01}, "zeta"),
        ({"zeta": 1.01}, "zeta"),
        ({"tau": 0.0}, "tau"),
        ({"beta_w": 0.0}, "beta_w"),
        ({"beta_l": -0.2}, "beta_l"),
        ({"slic_lambda": -1.0}, "slic_lambda"),
        ({"sft_lambda": -1.0}, "sft_lambda"),
    ],
)
def test_invalid_settings_name_the_field(overrides, field):
    with pytest.raises(FieldError) as err:
        LossSettings(**overrides)
    assert err.value.name == ("loss" if field == "name" else field)


def test_unknown_name_errors_list_the_valid_names():
    with pytest.raises(ValueError, match="dpo, minll, unll, conll, ipo, slic, flex_dpo, dpo_sft"):
        LossSettings(name="ppo")
    with pytest.raises(ValueError, match="linear, quadratic, sqrt, expectile"):
        weighting("cubic")
    with pytest.raises(ValueError, match="valid: dpo"):
        get_loss("ppo")


def test_valid_boundaries_pass():
    for kwargs in ({"zeta": 0.0}, {"zeta": 1.0}, {"alpha": 0.0}, {"name": "flex_dpo", "beta_w": 1.0}):
        assert LossSettings(**kwargs)


def test_needs_gen():
    assert {name for name in LOSSES if LossSettings(name=name).needs_gen} == set(PENALIZED)


def test_penalized_loss_without_gen_is_rejected():
    policy, reference = hand_batch()
    no_gen = dataclasses.replace(policy, gen=None)
    with pytest.raises(ValueError, match="policy.gen"):
        preference_loss(no_gen, reference, LossSettings(name="minll", alpha=1.0))
    no_tokens = dataclasses.replace(policy, gen_token_logps=None, gen_token_mask=None)
    with pytest.raises(ValueError, match="gen_token_logps"):
        preference_loss(no_tokens, reference, LossSettings(name="unll", alpha=1.0))


def test_token_mean_unlikelihood_is_the_token_sum_over_the_length():
    policy, reference = hand_batch()
    terms = loss_terms(policy, reference, LossSettings(name="unll", alpha=1.0))
    total = unlikelihood_term(terms, LossSettings(name="unll", unll_level="token_sum"))
    mean = unlikelihood_term(terms, LossSettings(name="unll", unll_level="token_mean"))
    by_hand = [sum(-math.log1p(-math.exp(t)) for t in row) for row in GEN_TOKEN_ROWS]
    assert total.tolist() == pytest.approx(by_hand)
    assert mean.tolist() == pytest.approx([v / len(row) for v, row in zip(by_hand, GEN_TOKEN_ROWS)])


@pytest.mark.parametrize(
    "cfg",
    [LossSettings(name="minll", f="linear", alpha=0.3), LossSettings(name="conll", f="sqrt", alpha=0.7),
     LossSettings(name="unll", f="linear", alpha=0.5, unll_level="sequence"),
     LossSettings(name="unll", f="quadratic", alpha=0.5, unll_level="token_sum"),
     LossSettings(name="unll", f="linear", alpha=0.5, unll_level="token_mean")],
    ids=lambda c: f"{c.name}-{c.unll_level}",
)
def test_gradient_weights_equal_autograd(cfg):
    """The logged per-token gradient weights equal |d term / d log p_t| averaged over the
    response's tokens, by autograd: the DPO term's on y_w, the penalty's on y_gen."""
    policy, reference = hand_batch(requires_grad=True)
    # Per-token log-probs of y_w: spread each row's sum over two tokens so d/d(token) is defined.
    w_tokens = torch.stack([policy.chosen.detach() / 2] * 2, dim=1).requires_grad_(True)
    gen_tokens = policy.gen_token_logps.detach().clone().requires_grad_(True)
    mask = policy.gen_token_mask
    gen_sum = torch.where(mask, gen_tokens, torch.zeros_like(gen_tokens)).sum(-1)
    policy = dataclasses.replace(policy, chosen=w_tokens.sum(-1), gen=gen_sum, gen_token_logps=gen_tokens)
    terms = loss_terms(policy, reference, cfg)
    dpo_weight, penalty_weight = gradient_weights(terms, cfg)
    dpo_rows = -torch.nn.functional.logsigmoid(cfg.beta * terms.d_chosen - cfg.beta * terms.d_rejected)
    grad_w, = torch.autograd.grad(dpo_rows.sum(), [w_tokens])
    assert dpo_weight.tolist() == pytest.approx(grad_w.abs().mean(-1).tolist(), rel=1e-6)
    rows, penalty = get_loss(cfg.name)(terms, cfg)
    # conll's penalty is its whole loss minus DPO; its y_gen gradient is that of the whole loss
    target = rows if cfg.name == "conll" else penalty
    grad_gen, = torch.autograd.grad(target.sum(), [gen_tokens])
    n_tokens = mask.sum(-1)
    expected = (grad_gen.abs() * mask).sum(-1) / n_tokens
    assert penalty_weight.tolist() == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-12)
    assert (penalty_weight > 0).any()


def test_penalized_losses_log_their_gradient_weights():
    policy, reference = hand_batch()
    _, parts = preference_loss(policy, reference, LossSettings(name="unll", alpha=1.0))
    assert {"grad_weight_dpo", "grad_weight_penalty", "grad_weight_penalty_fired", "grad_weight_dpo_fired"} <= set(parts)
    _, dpo_parts = preference_loss(policy, reference, LossSettings(name="dpo"))
    assert "grad_weight_penalty" not in dpo_parts


def test_a_new_loss_needs_one_record_and_one_function(monkeypatch):
    """A new loss is its record in dppo.settings.LOSS_KINDS, its function in LOSSES and, for a
    DPPO loss, its penalty's gradient weight in PENALTY_WEIGHTS: everything else reads these.
    Here a copy of minll under a new name, so every number must equal minll's."""
    kind = st.LossKind("minll_copy", penalizes_gen=True, margin_only=lambda cfg: True,
                       hyperparameters=("beta", "alpha"))
    monkeypatch.setitem(st.LOSS_KINDS, kind.name, kind)
    with pytest.raises(RuntimeError, match="different losses"):
        check_registry()  # a record without its torch code is caught
    monkeypatch.setitem(LOSSES, kind.name, loss_minll)
    monkeypatch.setitem(PENALTY_WEIGHTS, kind.name, weight_minll)
    check_registry()

    cfg = LossSettings(name="minll_copy", f="quadratic", alpha=0.5)
    minll = dataclasses.replace(cfg, name="minll")
    assert cfg.needs_gen and not cfg.token_level and "minll_copy" in st.penalized_losses()
    policy, reference = hand_batch()
    (loss, parts), (same_loss, same_parts) = (preference_loss(policy, reference, c) for c in (cfg, minll))
    assert torch.equal(loss, same_loss) and parts.keys() == same_parts.keys()
    assert all(torch.equal(parts[key], same_parts[key]) for key in parts)
    weights = gradient_weights(loss_terms(policy, reference, cfg), cfg)
    assert all(torch.equal(a, b) for a, b in zip(weights, gradient_weights(loss_terms(policy, reference, minll), minll)))

    # The run labels and the config's schema read the record too.
    assert st.Experiment(name="x", loss=cfg).label == "minll_copy (quadratic)"
    row = {"loss": "minll_copy", "f": "quadratic", "alpha": 0.5, "label": "minll_copy (quadratic)"}
    assert run_selection.method_key(row) == "minll_copy (quadratic)"
    assert run_selection.label_with_alpha(row) == "minll_copy (quadratic), α=0.5"
    config = load_yaml(ROOT / "config.yaml")
    config["experiments"]["dpo"]["loss"] = "minll_copy"
    validate_config(config)
