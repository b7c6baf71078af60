"""The 3D-properties toy model (seed 002, Section 3.2, Appendix B.2 and D): its spaces, the
four on/off-policy scenarios, the MLP policy, step 1 (fit to a set distribution) and the
preference pairs.

Discrete spaces of 4 prompts and 10 responses. Response ``i`` (0-based ``0..3``) is the
optimal ("chosen") response for prompt ``i``; responses ``4..7`` are the rejected ones and
``8, 9`` never appear in the preference data ("unseen"). The policy is a three-layer MLP from
a one-hot prompt to a categorical distribution over the responses; every response is a
single "token", so a response's log-probability is one log-softmax entry.

The four scenarios of the seed's Figure 3 differ only in the step-1 distribution: a response
set is "on-policy" when the step-1 model gives it a high probability and "off-policy" when it
gives it a low one (:class:`dppo.settings.InitialLevels` holds the exact numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dppo.settings import InitialLevels
from dppo.train.losses import ResponseLogps

N_PROMPTS = 4
N_RESPONSES = 10
CHOSEN_IDS = (0, 1, 2, 3)  # response i is optimal for prompt i


REJECTED_IDS = (4, 5, 6, 7)


UNSEEN_IDS = (8, 9)


# float64: the rejected probabilities fall by many orders of magnitude, and dL/dpi = dL/dlogpi / pi
# must stay finite while they do.
DTYPE = torch.float64


UNDERFLOW_LOGP = math.log(torch.finfo(DTYPE).tiny)  # about -708: exp() below this is not normal


@dataclass(frozen=True)
class Scenario:
    """One of the seed's four scenarios: is each response set on- or off-policy?"""

    number: int
    chosen_on_policy: bool
    rejected_on_policy: bool

    @property
    def label(self) -> str:
        def word(on: bool) -> str:
            return "on" if on else "off"

        return (
            f"S{self.number}: chosen {word(self.chosen_on_policy)}, "
            f"rejected {word(self.rejected_on_policy)}"
        )


# Numbered as the seed's Table 4: 1 both on-policy, 2 chosen off, 3 rejected off, 4 both off.
SCENARIOS = (
    Scenario(1, chosen_on_policy=True, rejected_on_policy=True),
    Scenario(2, chosen_on_policy=False, rejected_on_policy=True),
    Scenario(3, chosen_on_policy=True, rejected_on_policy=False),
    Scenario(4, chosen_on_policy=False, rejected_on_policy=False),
)


def initial_distribution(scenario: Scenario, levels: InitialLevels) -> torch.Tensor:
    """The step-1 target distribution of ``scenario``, shape (prompts, responses), rows sum to 1."""
    chosen = levels.chosen_on if scenario.chosen_on_policy else levels.chosen_off
    rejected = levels.rejected_on if scenario.rejected_on_policy else levels.rejected_off
    n_rest = N_RESPONSES - 1 - len(REJECTED_IDS)
    rest = (1.0 - chosen - len(REJECTED_IDS) * rejected) / n_rest
    if not (chosen > 0 and rejected > 0 and rest > 0):
        raise ValueError(
            f"toy initial levels {levels} leave no valid distribution for scenario "
            f"{scenario.number}: chosen={chosen}, rejected={rejected}, each other={rest}"
        )
    target = torch.full((N_PROMPTS, N_RESPONSES), rest, dtype=DTYPE)
    target[:, list(REJECTED_IDS)] = rejected
    target[CHOSEN_IDS, CHOSEN_IDS] = chosen
    return target


class ToyPolicy(nn.Module):
    """Three-layer MLP: one-hot prompt -> log-probabilities over the responses.

    ``output_rank`` (None: a full output layer) factorises the output layer as U V, V a
    (rank x hidden) map shared by every response and U one rank-dim row per response: the
    responses then share features, so moving one response's logit moves the others'."""

    def __init__(self, hidden: int, output_rank: int | None = None):
        super().__init__()
        # Built in order: the initial weights are drawn from the RNG in this order.
        layers = [nn.Linear(N_PROMPTS, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()]
        if output_rank is None:
            layers.append(nn.Linear(hidden, N_RESPONSES))
        else:
            layers += [nn.Linear(hidden, output_rank, bias=False), nn.Linear(output_rank, N_RESPONSES)]
        self.net = nn.Sequential(*layers)

    def forward(self) -> torch.Tensor:
        """Log-probabilities for every prompt at once, shape (prompts, responses)."""
        prompts = torch.eye(N_PROMPTS, dtype=self.net[0].weight.dtype)
        return torch.log_softmax(self.net(prompts), dim=-1)


def build_policy(hidden: int, seed: int, output_rank: int | None = None) -> ToyPolicy:
    """A freshly initialised policy; ``seed`` fixes the weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ToyPolicy(hidden, output_rank).to(DTYPE)


class StackedPolicy(nn.Module):
    """R independent :class:`ToyPolicy` networks as one module, so that one batched forward and
    one Adam train them all at once. Every weight and bias gets a leading run axis; run r's
    numbers touch run r's parameters only, and Adam is elementwise, so each run trains exactly
    as it would alone (up to float rounding of the batched matmuls)."""

    def __init__(self, weights, biases, relu_after):
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(w.detach().clone()) for w in weights])
        # A layer without bias (the low-rank factor V) keeps None: ParameterList takes none.
        self.has_bias = tuple(b is not None for b in biases)
        self.biases = nn.ParameterList([nn.Parameter(b.detach().clone()) for b in biases if b is not None])
        self.relu_after = tuple(relu_after)

    @classmethod
    def stack(cls, policies) -> StackedPolicy:
        """One run per policy, in order; every policy must have the same shape."""
        modules = list(policies[0].net)
        linears = [i for i, m in enumerate(modules) if isinstance(m, nn.Linear)]
        relu_after = [i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU) for i in linears]
        weights, biases = [], []
        for i in linears:
            weights.append(torch.stack([p.net[i].weight.detach() for p in policies]))
            has_bias = modules[i].bias is not None
            biases.append(torch.stack([p.net[i].bias.detach() for p in policies]) if has_bias else None)
        return cls(weights, biases, relu_after)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight, bias or None) per linear layer, each with the leading run axis."""
        biases = iter(self.biases)
        return [(w, next(biases) if has else None) for w, has in zip(self.weights, self.has_bias)]

    def select(self, runs: torch.Tensor) -> StackedPolicy:
        """A new, independent stack whose run i is a copy of this stack's run ``runs[i]``."""
        layers = self.layers()
        return StackedPolicy(
            [w.detach()[runs] for w, _ in layers],
            [None if b is None else b.detach()[runs] for _, b in layers],
            self.relu_after,
        )

    @property
    def n_runs(self) -> int:
        return int(self.weights[0].shape[0])

    def output_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer's (weight, bias): row j of each holds response j's own parameters."""
        weight, bias = self.layers()[-1]
        return weight, bias

    def forward(self) -> torch.Tensor:
        """Log-probabilities of every run and prompt, shape (runs, prompts, responses)."""
        x = torch.eye(N_PROMPTS, dtype=self.weights[0].dtype).expand(self.n_runs, -1, -1)
        for (weight, bias), relu in zip(self.layers(), self.relu_after):
            x = torch.bmm(x, weight.transpose(1, 2)) if bias is None else torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))
            if relu:
                x = torch.relu(x)
        return torch.log_softmax(x, dim=-1)


def fit_distribution(policy: StackedPolicy, target: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """Step 1: train every run of ``policy`` (in place) to output its ``target`` (runs, prompts,
    responses) by minimising KL(target || policy) with Adam. The objective is the SUM over runs
    of each run's mean-over-prompts KL, so each run gets its own gradient. Returns the final KL
    of every run, shape (runs,)."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr, foreach=True)
    for _ in range(steps):
        optimizer.zero_grad()
        kl = _kl(target, policy())
        kl.sum().backward()
        optimizer.step()
    with torch.no_grad():
        return _kl(target, policy())


def _kl(target: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of KL(target || exp(logp)), one value per leading index."""
    return (target * (target.log() - logp)).sum(-1).mean(-1)


@dataclass(frozen=True)
class PreferencePairs:
    """Index tensors of equal shape, (pairs,) or (runs, pairs): prompt, chosen and rejected
    response."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        """The number of pairs (of one run)."""
        return int(self.prompt.shape[-1])

    @classmethod
    def stack(cls, pairs) -> PreferencePairs:
        """One run per entry of ``pairs`` (each of shape (pairs,)), as (runs, pairs)."""
        return cls(*(torch.stack([getattr(p, name) for p in pairs]) for name in ("prompt", "chosen", "rejected")))


def make_preference_pairs(pairs_per_prompt: int, seed: int) -> PreferencePairs:
    """Every prompt with its optimal response chosen and a uniformly drawn rejected response."""
    if pairs_per_prompt < 1:
        raise ValueError(f"toy pairs_per_prompt must be >= 1, got {pairs_per_prompt}")
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.arange(N_PROMPTS).repeat_interleave(pairs_per_prompt)
    drawn = torch.randint(len(REJECTED_IDS), (len(prompt),), generator=generator)
    rejected = torch.tensor(REJECTED_IDS)[drawn]
    return PreferencePairs(prompt=prompt, chosen=prompt.clone(), rejected=rejected)


def greedy_responses(reference_logp: torch.Tensor) -> torch.Tensor:
    """y_gen: the reference (step-1) model's argmax response to every prompt, shape (..., prompts)."""
    return reference_logp.argmax(dim=-1)


def pair_logps(logp_rows: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, gen: torch.Tensor) -> ResponseLogps:
    """ResponseLogps of single-token responses. ``logp_rows[i]`` (B, responses) is the
    log-distribution of row i's prompt and ``chosen``, ``rejected``, ``gen`` (B,) its responses;
    every length is 1 and the one "token" of y_gen is y_gen itself."""
    def pick(responses: torch.Tensor) -> torch.Tensor:
        return logp_rows.gather(1, responses[:, None]).squeeze(1)

    ones = torch.ones(len(logp_rows), dtype=logp_rows.dtype)
    gen_logp = pick(gen)
    return ResponseLogps(
        chosen=pick(chosen),
        rejected=pick(rejected),
        chosen_len=ones,
        rejected_len=ones,
        gen=gen_logp,
        gen_len=ones,
        gen_token_logps=gen_logp[:, None],
        gen_token_mask=torch.ones(len(logp_rows), 1, dtype=torch.bool),
    )


def distribution_summary(logp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean over prompts of: the optimal response's probability (``p_chosen``), the mass on the
    rejected responses (``p_rejected``), on the two unseen responses (``p_unseen``), on the other
    prompts' optimal responses (``p_other_chosen``) and on everything outside the prompt's own
    preference data, i.e. unseen plus other prompts' optimal responses (``p_outside``).
    ``logp`` is (..., prompts, responses); every value has the leading shape (...)."""
    probs = logp.detach().exp()
    prompts = torch.arange(N_PROMPTS)
    chosen = probs[..., prompts, prompts]
    rejected = probs[..., list(REJECTED_IDS)].sum(-1)
    unseen = probs[..., list(UNSEEN_IDS)].sum(-1)
    other = probs[..., list(CHOSEN_IDS)].sum(-1) - chosen
    return {
        "p_chosen": chosen.mean(-1),
        "p_rejected": rejected.mean(-1),
        "p_unseen": unseen.mean(-1),
        "p_other_chosen": other.mean(-1),
        "p_outside": (unseen + other).mean(-1),
    }
