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

from dppo.losses import ResponseLogps
from dppo.settings import InitialLevels

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
    """Three-layer MLP: one-hot prompt -> log-probabilities over the responses."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(N_PROMPTS, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, N_RESPONSES),
        )

    def forward(self) -> torch.Tensor:
        """Log-probabilities for every prompt at once, shape (prompts, responses)."""
        prompts = torch.eye(N_PROMPTS, dtype=self.net[0].weight.dtype)
        return torch.log_softmax(self.net(prompts), dim=-1)


def build_policy(hidden: int, seed: int) -> ToyPolicy:
    """A freshly initialised policy; ``seed`` fixes the weights without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ToyPolicy(hidden).to(DTYPE)


def fit_distribution(policy: ToyPolicy, target: torch.Tensor, steps: int, lr: float) -> float:
    """Step 1: train ``policy`` (in place) to output ``target`` by minimising KL(target || policy)
    with Adam. Returns the final mean-over-prompts KL."""
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        kl = _kl(target, policy())
        kl.backward()
        optimizer.step()
    with torch.no_grad():
        return float(_kl(target, policy()))


def _kl(target: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return (target * (target.log() - logp)).sum(-1).mean()


@dataclass(frozen=True)
class PreferencePairs:
    """Index tensors, shape (pairs,): prompt, chosen response, rejected response."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return int(self.prompt.numel())


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
    """y_gen: the reference (step-1) model's argmax response to every prompt, shape (prompts,)."""
    return reference_logp.argmax(dim=-1)


def pair_logps(logp_rows: torch.Tensor, pairs: PreferencePairs, y_gen: torch.Tensor) -> ResponseLogps:
    """ResponseLogps of single-token responses. ``logp_rows[i]`` is the log-distribution for
    pair ``i``'s prompt; every length is 1 and the one "token" of y_gen is y_gen itself."""
    def pick(responses: torch.Tensor) -> torch.Tensor:
        return logp_rows.gather(1, responses[:, None]).squeeze(1)

    ones = torch.ones(len(pairs), dtype=logp_rows.dtype)
    gen = pick(y_gen[pairs.prompt])
    return ResponseLogps(
        chosen=pick(pairs.chosen),
        rejected=pick(pairs.rejected),
        chosen_len=ones,
        rejected_len=ones,
        gen=gen,
        gen_len=ones,
        gen_token_logps=gen[:, None],
        gen_token_mask=torch.ones(len(pairs), 1, dtype=torch.bool),
    )


def distribution_summary(logp: torch.Tensor) -> dict[str, float]:
    """Mean over prompts of: the optimal response's probability (``p_chosen``), the mass on the
    rejected responses (``p_rejected``), on the two unseen responses (``p_unseen``), on the other
    prompts' optimal responses (``p_other_chosen``) and on everything outside the prompt's own
    preference data, i.e. unseen plus other prompts' optimal responses (``p_outside``)."""
    probs = logp.detach().exp()
    prompts = torch.arange(N_PROMPTS)
    chosen = probs[prompts, prompts]
    rejected = probs[:, list(REJECTED_IDS)].sum(-1)
    unseen = probs[:, list(UNSEEN_IDS)].sum(-1)
    other = probs[:, list(CHOSEN_IDS)].sum(-1) - chosen
    return {
        "p_chosen": float(chosen.mean()),
        "p_rejected": float(rejected.mean()),
        "p_unseen": float(unseen.mean()),
        "p_other_chosen": float(other.mean()),
        "p_outside": float((unseen + other).mean()),
    }
