"""DPO-family preference losses and the DPPO penalties.

Every loss is a pure function of per-sequence summed log-probs (and, for token-level
unlikelihood, per-token log-probs of y_gen), so the same code serves the language
model pipeline and the toy model of the 3D-properties seed (where each response is a
single "token").

Notation (docs/design.md, "Losses"): ``logp(y)`` is the summed token log-prob of ``y``
given the prompt, ``D(y) = logp_theta(y) - logp_ref(y)``, ``sigma`` the logistic
function.

- ``dpo``      ``-log sigma(beta (D(y_w) - D(y_l)))``
- ``minll``    ``dpo + alpha f(r) logp_theta(y_gen)``
- ``unll``     ``dpo + alpha f(r) U(y_gen)``: ``unll_level="sequence"`` U = ``-log(1 - p_theta(y_gen | x))``
               (the poster's formula), ``token_sum`` U = ``-sum_t log(1 - p_theta(y_gen_t | x, y_gen_<t))``,
               ``token_mean`` the same divided by the number of y_gen tokens
- ``conll``    ``-log sigma(beta (D(y_w) - D(y_l)) - alpha beta f(r) D(y_gen))``
- ``ipo``      ``(D(y_w) - D(y_l) - 1/(2 tau))^2`` on length-averaged log-probs
- ``slic``     ``max(0, delta - logp_theta(y_w) + logp_theta(y_l)) - lambda logp_theta(y_w)``
- ``flex_dpo`` ``-log sigma(beta_w D(y_w) - beta_l D(y_l))``
- ``dpo_sft``  ``dpo + lambda * mean token NLL of y_w``

The trigger ``r`` is ``logp_theta(y_w) - logp_theta(y_l)`` (``r_mode="policy"``, the
poster's r) or ``beta (D(y_w) - D(y_l))`` (``r_mode="implicit"``). It is DETACHED: r and
f(r) only weight the penalty, they never receive gradient.

Weightings f(r): ``linear = max(-r, 0)``, ``quadratic = 1{r<0} r^2``,
``sqrt = 1{r<0} sqrt(-r)``, ``expectile = |zeta - 1{r<0}| r^2``. The poster prints the
expectile without the absolute value; ``(zeta - 1) r^2`` is negative for r < 0, which
would turn the penalty into a reward for y_gen exactly when the model ranks the pair
wrongly, so we read it as the (always non-negative) asymmetric expectile weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dppo.settings import LOSS_KINDS, WEIGHTING_KINDS, LossSettings, penalized_losses

# Unlikelihood clamps p(y_gen token) to at most 1 - UNLL_MIN_ONE_MINUS_P, so
# -log(1 - p) <= log(1e5) ~ 11.5 per token and its gradient stays bounded (<= 1e5)
# even when the model puts (numerically) all mass on the token.
UNLL_MIN_ONE_MINUS_P = 1e-5
_UNLL_MAX_LOGP = math.log1p(-UNLL_MIN_ONE_MINUS_P)


# --------------------------------------------------------------------------- inputs


@dataclass
class ResponseLogps:
    """Log-probs of one batch of B preference rows; every tensor has shape (B,)."""

    chosen: Tensor
    rejected: Tensor
    chosen_len: Tensor
    rejected_len: Tensor
    gen: Tensor | None = None
    gen_len: Tensor | None = None
    gen_token_logps: Tensor | None = None  # (B, T), padded
    gen_token_mask: Tensor | None = None  # (B, T) bool, True on real tokens
    # (B,) bool, False on rows whose y_gen was not scored because no penalty fires there (their
    # `gen` is the reference's); None: every row scored.
    gen_scored: Tensor | None = None


# ------------------------------------------------------------------- weightings f(r)


def f_linear(r: Tensor, zeta: float) -> Tensor:
    return torch.clamp(-r, min=0.0)


def f_quadratic(r: Tensor, zeta: float) -> Tensor:
    return torch.where(r < 0, r * r, torch.zeros_like(r))


def f_sqrt(r: Tensor, zeta: float) -> Tensor:
    # clamp before sqrt so the unused branch of `where` never holds a NaN.
    return torch.where(r < 0, torch.sqrt(torch.clamp(-r, min=0.0)), torch.zeros_like(r))


def f_expectile(r: Tensor, zeta: float) -> Tensor:
    return torch.abs(zeta - (r < 0).to(r.dtype)) * r * r


WEIGHTINGS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "linear": f_linear,
    "quadratic": f_quadratic,
    "sqrt": f_sqrt,
    "expectile": f_expectile,
}


def weighting(name: str) -> Callable[[Tensor, float], Tensor]:
    """The weighting f(r, zeta) called `name` (zeta is used by `expectile` only)."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting f={name!r}; valid: {', '.join(WEIGHTINGS)}")
    return WEIGHTINGS[name]


# ------------------------------------------------------------------ shared helpers


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate over the whole range (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def unlikelihood(logp: Tensor) -> Tensor:
    """-log(1 - p) from log p, finite with finite gradient even at p = 1.

    Log-probs above log(1 - UNLL_MIN_ONE_MINUS_P) are clamped in value only: the
    gradient is passed through at the clamp point, so a token with p -> 1 is still
    pushed down (a plain clamp would silence exactly the tokens the penalty targets).
    """
    clamped = torch.clamp(logp, max=_UNLL_MAX_LOGP)
    straight_through = logp + (clamped - logp).detach()
    return -log1mexp(straight_through)


def _float(t: Tensor) -> Tensor:
    # Half-precision log-probs lose the small differences DPO lives on.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass(frozen=True)
class LossTerms:
    """Per-row quantities every loss is built from (all shape (B,))."""

    policy: ResponseLogps
    reference: ResponseLogps
    d_chosen: Tensor
    d_rejected: Tensor
    d_gen: Tensor | None
    r: Tensor  # detached
    f_r: Tensor  # detached


def _dpo_rows(d_chosen: Tensor, d_rejected: Tensor, beta_w: float, beta_l: float) -> Tensor:
    # dpo and flex_dpo share this so that beta_w = beta_l = beta gives dpo bit for bit.
    return -F.logsigmoid(beta_w * d_chosen - beta_l * d_rejected)


def _plain_dpo(terms: LossTerms, cfg: LossSettings) -> Tensor:
    return _dpo_rows(terms.d_chosen, terms.d_rejected, cfg.beta, cfg.beta)


# ------------------------------------------------------------------------- losses
# Each returns (per-row loss, per-row penalty/regularizer part), both shape (B,).


def loss_dpo(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    rows = _plain_dpo(terms, cfg)
    return rows, torch.zeros_like(rows)


def loss_minll(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    penalty = cfg.alpha * terms.f_r * _float(terms.policy.gen)
    return _plain_dpo(terms, cfg) + penalty, penalty


def _gen_token_logps(terms: LossTerms) -> tuple[Tensor, Tensor]:
    """y_gen's per-token log-probs with padding replaced (-1: any finite value, never read), and
    the mask of real tokens."""
    token_logps, mask = terms.policy.gen_token_logps, terms.policy.gen_token_mask
    if token_logps is None or mask is None:
        raise ValueError(
            "token-level unll needs policy.gen_token_logps and gen_token_mask "
            "(a single-token response, as in the toy model, is gen.unsqueeze(1))"
        )
    mask = mask.bool()
    # Padding may hold anything (0 = p of 1, even NaN): replace it before the log so that
    # neither the value nor the gradient sees it.
    safe = torch.where(mask, _float(token_logps), torch.full_like(_float(token_logps), -1.0))
    return safe, mask


def unlikelihood_term(terms: LossTerms, cfg: LossSettings) -> Tensor:
    """U(y_gen) per row: ``sequence`` -log(1 - p(y_gen)); ``token_sum`` -sum_t log(1 - p_t);
    ``token_mean`` the same divided by the number of y_gen tokens."""
    if cfg.unll_level == "sequence":
        return unlikelihood(_float(terms.policy.gen))
    safe, mask = _gen_token_logps(terms)
    total = torch.where(mask, unlikelihood(safe), torch.zeros_like(safe)).sum(dim=-1)
    if cfg.unll_level == "token_mean":
        return total / mask.sum(dim=-1).clamp(min=1).to(total.dtype)
    return total


def loss_unll(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    penalty = cfg.alpha * terms.f_r * unlikelihood_term(terms, cfg)
    return _plain_dpo(terms, cfg) + penalty, penalty


def loss_conll(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    logits = cfg.beta * terms.d_chosen - cfg.beta * terms.d_rejected
    rows = -F.logsigmoid(logits - cfg.alpha * cfg.beta * terms.f_r * terms.d_gen)
    # conll is one term; its "penalty" part is what it adds on top of dpo.
    return rows, rows - _plain_dpo(terms, cfg)


def loss_ipo(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    def mean_d(policy: Tensor, reference: Tensor, length: Tensor) -> Tensor:
        return (_float(policy) - _float(reference)) / length.clamp(min=1).to(terms.d_chosen.dtype)

    pol, ref = terms.policy, terms.reference
    d_w = mean_d(pol.chosen, ref.chosen, pol.chosen_len)
    d_l = mean_d(pol.rejected, ref.rejected, pol.rejected_len)
    rows = (d_w - d_l - 1.0 / (2.0 * cfg.tau)) ** 2
    return rows, torch.zeros_like(rows)


def loss_slic(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    logp_w, logp_l = _float(terms.policy.chosen), _float(terms.policy.rejected)
    regularizer = -cfg.slic_lambda * logp_w
    return torch.clamp(cfg.slic_delta - logp_w + logp_l, min=0.0) + regularizer, regularizer


def loss_flex_dpo(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    rows = _dpo_rows(terms.d_chosen, terms.d_rejected, cfg.beta_chosen, cfg.beta_rejected)
    return rows, torch.zeros_like(rows)


def loss_dpo_sft(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    pol = terms.policy
    mean_nll = -_float(pol.chosen) / pol.chosen_len.clamp(min=1).to(terms.d_chosen.dtype)
    regularizer = cfg.sft_lambda * mean_nll
    return _plain_dpo(terms, cfg) + regularizer, regularizer


# --------------------------------------------------------------- penalty scale


def _odds(logp: Tensor) -> Tensor:
    """p / (1 - p) from log p, with p clamped as :func:`unlikelihood` clamps it."""
    logp = torch.clamp(logp, max=_UNLL_MAX_LOGP)
    return torch.exp(logp - log1mexp(logp))


# Each gives the penalty's gradient weight per y_gen token, (B,), from the DPO logit and alpha f(r).


def weight_minll(terms: LossTerms, cfg: LossSettings, logits: Tensor, scale: Tensor) -> Tensor:
    return scale


def weight_conll(terms: LossTerms, cfg: LossSettings, logits: Tensor, scale: Tensor) -> Tensor:
    return scale * cfg.beta * torch.sigmoid(-(logits - scale * cfg.beta * terms.d_gen))


def weight_unll(terms: LossTerms, cfg: LossSettings, logits: Tensor, scale: Tensor) -> Tensor:
    if cfg.unll_level == "sequence":
        return scale * _odds(_float(terms.policy.gen))
    safe, mask = _gen_token_logps(terms)
    odds = torch.where(mask, _odds(safe), torch.zeros_like(safe))
    n_tokens = mask.sum(dim=-1).clamp(min=1).to(odds.dtype)
    per_token = odds.sum(dim=-1) / n_tokens  # mean over y_gen's tokens
    return scale * (per_token / n_tokens if cfg.unll_level == "token_mean" else per_token)


def gradient_weights(terms: LossTerms, cfg: LossSettings) -> tuple[Tensor, Tensor]:
    """Per row: the DPO term's and the penalty's gradient weight per token, both (B,).

    A term's weight on a response is the mean over the response's tokens of |d term / d log
    p_t|: the DPO term's on y_w is beta sigma(-beta (D(y_w) - D(y_l))) for every token; the
    penalty's on y_gen is alpha f(r) for minll, alpha f(r) p/(1-p) for sequence-level unll,
    alpha f(r) mean_t p_t/(1-p_t) for token_sum (over T for token_mean), and alpha beta f(r)
    sigma(-z) for conll (z its whole logit); zero for a loss without a penalty. Their ratio says
    how hard each y_gen token is pushed down against how hard each y_w token is pulled up: alpha
    is read against it."""
    with torch.no_grad():
        logits = cfg.beta * terms.d_chosen - cfg.beta * terms.d_rejected
        dpo = cfg.beta * torch.sigmoid(-logits)
        weight = PENALTY_WEIGHTS.get(cfg.name)
        penalty = weight(terms, cfg, logits, cfg.alpha * terms.f_r) if weight else torch.zeros_like(dpo)
    return dpo, penalty


LOSSES: dict[str, Callable[[LossTerms, LossSettings], tuple[Tensor, Tensor]]] = {
    "dpo": loss_dpo,
    "minll": loss_minll,
    "unll": loss_unll,
    "conll": loss_conll,
    "ipo": loss_ipo,
    "slic": loss_slic,
    "flex_dpo": loss_flex_dpo,
    "dpo_sft": loss_dpo_sft,
}
# The DPPO losses' penalty gradient weights (gradient_weights).
PENALTY_WEIGHTS: dict[str, Callable[[LossTerms, LossSettings, Tensor, Tensor], Tensor]] = {
    "minll": weight_minll,
    "unll": weight_unll,
    "conll": weight_conll,
}


def check_registry() -> None:
    """The torch code and dppo.settings' records (LOSS_KINDS, WEIGHTING_KINDS) name the same
    losses, DPPO losses and weightings."""
    pairs = (("losses", LOSSES, LOSS_KINDS), ("penalty weights", PENALTY_WEIGHTS, penalized_losses()),
             ("weightings", WEIGHTINGS, WEIGHTING_KINDS))
    for what, torch_side, records in pairs:
        if set(torch_side) != set(records):
            raise RuntimeError(f"dppo.train.losses and dppo.settings name different {what}: "
                               f"{sorted(torch_side)} vs {sorted(records)}")


check_registry()


def get_loss(name: str) -> Callable[[LossTerms, LossSettings], tuple[Tensor, Tensor]]:
    if name not in LOSSES:
        raise ValueError(f"unknown loss name={name!r}; valid: {', '.join(LOSSES)}")
    return LOSSES[name]


# ---------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class Trigger:
    """The detached trigger r of every row and the penalty weighting f(r) (both shape (B,))."""

    r: Tensor
    f_r: Tensor

    def penalized(self, cfg: LossSettings) -> Tensor:
        """Rows whose penalty weight alpha f(r) is not zero (bool, shape (B,))."""
        return cfg.alpha * self.f_r != 0

    def shuffled(self, seed: int) -> "Trigger":
        """The same f(r) values on rows drawn at random (a permutation seeded by ``seed``): the
        penalty fires as often and as strongly, regardless of each row's own ranking."""
        order = torch.randperm(len(self.f_r), generator=torch.Generator().manual_seed(seed)).to(self.f_r.device)
        return Trigger(r=self.r, f_r=self.f_r[order])


def trigger(policy: ResponseLogps, reference: ResponseLogps, cfg: LossSettings) -> Trigger:
    """r and f(r) of every row (see module docstring); depends on y_w and y_l only, so it is
    known before y_gen is scored."""
    with torch.no_grad():
        if cfg.r_mode == "policy":
            r = _float(policy.chosen) - _float(policy.rejected)
        else:
            d_w = _float(policy.chosen) - _float(reference.chosen)
            d_l = _float(policy.rejected) - _float(reference.rejected)
            r = cfg.beta * (d_w - d_l)
    return Trigger(r=r, f_r=weighting(cfg.f)(r, cfg.zeta).detach())


def loss_terms(policy: ResponseLogps, reference: ResponseLogps, cfg: LossSettings,
               trig: Trigger | None = None) -> LossTerms:
    has_gen = policy.gen is not None
    if cfg.needs_gen and not has_gen:
        raise ValueError(f"loss {cfg.name!r} penalizes y_gen: policy.gen must be given")
    if has_gen and reference.gen is None:
        raise ValueError("policy.gen is given but reference.gen is not")
    trig = trig if trig is not None else trigger(policy, reference, cfg)
    return LossTerms(
        policy=policy,
        reference=reference,
        d_chosen=_float(policy.chosen) - _float(reference.chosen),
        d_rejected=_float(policy.rejected) - _float(reference.rejected),
        d_gen=_float(policy.gen) - _float(reference.gen) if has_gen else None,
        r=trig.r,
        f_r=trig.f_r,
    )


def preference_loss(
    policy: ResponseLogps, reference: ResponseLogps, cfg: LossSettings, trig: Trigger | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Batch-mean loss and its logged parts (detached scalar batch means).

    Parts: loss, dpo (plain DPO value, for comparison under every loss), penalty (the
    loss's penalty/regularizer term; conll: its excess over dpo), reward_chosen,
    reward_rejected, margin (beta D(.), chosen - rejected), r, f_r, frac_r_neg,
    reward_acc, logp_chosen, logp_rejected, and reward_gen / logp_gen when y_gen is scored on every
    row.
    ``trig``: the step's trigger when already computed (it gated y_gen's scoring).
    """
    terms = loss_terms(policy, reference, cfg, trig)
    rows, penalty = get_loss(cfg.name)(terms, cfg)
    loss = rows.mean()
    with torch.no_grad():
        reward_w = cfg.beta * terms.d_chosen
        reward_l = cfg.beta * terms.d_rejected
        parts = {
            "loss": loss,
            "dpo": _plain_dpo(terms, cfg).mean(),
            "penalty": penalty.mean(),
            "reward_chosen": reward_w.mean(),
            "reward_rejected": reward_l.mean(),
            "margin": (reward_w - reward_l).mean(),
            "r": terms.r.mean(),
            "f_r": terms.f_r.mean(),
            "frac_r_neg": (terms.r < 0).to(reward_w.dtype).mean(),
            "reward_acc": (reward_w > reward_l).to(reward_w.dtype).mean(),
            "logp_chosen": _float(policy.chosen).mean(),
            "logp_rejected": _float(policy.rejected).mean(),
        }
        if terms.d_gen is not None and (policy.gen_scored is None or bool(policy.gen_scored.all())):
            parts["reward_gen"] = (cfg.beta * terms.d_gen).mean()
            parts["logp_gen"] = _float(policy.gen).mean()
        if cfg.needs_gen:
            dpo_weight, penalty_weight = gradient_weights(terms, cfg)
            fired = terms.f_r > 0
            parts["grad_weight_dpo"] = dpo_weight.mean()
            parts["grad_weight_penalty"] = penalty_weight.mean()
            # Rows where the penalty fires only (mean over those rows; 0 when none fires).
            parts["grad_weight_penalty_fired"] = (penalty_weight * fired).sum() / fired.sum().clamp(min=1)
            parts["grad_weight_dpo_fired"] = (dpo_weight * fired).sum() / fired.sum().clamp(min=1)
        parts = {key: value.detach() for key, value in parts.items()}
    return loss, parts
