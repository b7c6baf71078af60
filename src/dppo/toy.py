"""The 3D-properties toy model (seed 002, Section 3.2, Appendix B.2 and D).

Discrete spaces of 4 prompts and 10 responses. Response ``i`` (0-based ``0..3``) is the
optimal ("chosen") response for prompt ``i``; responses ``4..7`` are the rejected ones and
``8, 9`` never appear in the preference data ("unseen"). The policy is a three-layer MLP from
a one-hot prompt to a categorical distribution over the responses.

Step 1 ("SFT") fits the MLP to a hand-set output distribution; that fitted model is the
reference model. Step 2 trains a copy of it on preference pairs (the prompt's optimal response
chosen, a uniformly drawn response of ``4..7`` rejected) with any loss of
:mod:`dppo.losses`; every response is a single "token", so a response's log-probability is one
log-softmax entry and every length is 1.

The four scenarios of the seed's Figure 3 differ only in the step-1 distribution: a response
set is "on-policy" when the step-1 model gives it a high probability and "off-policy" when it
gives it a low one (:class:`InitialLevels` holds the exact numbers).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from dppo.losses import LossConfig, ResponseLogps, preference_loss

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


@dataclass(frozen=True)
class InitialLevels:
    """Step-1 target probabilities, per prompt: the optimal response gets ``chosen_*``, each of
    the four rejected responses gets ``rejected_*``, and the rest of the mass is spread evenly
    over the five other responses (the other prompts' optimal responses and the two unseen)."""

    chosen_on: float = 0.3
    chosen_off: float = 0.03
    rejected_on: float = 0.1
    rejected_off: float = 0.01


def initial_distribution(scenario: Scenario, levels: InitialLevels = InitialLevels()) -> torch.Tensor:
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


def train_preference(
    policy: ToyPolicy,
    reference_logp: torch.Tensor,
    pairs: PreferencePairs,
    y_gen: torch.Tensor,
    loss_cfg: LossConfig,
    steps: int,
    lr: float,
) -> list[dict[str, float]]:
    """Step 2: full-batch Adam on ``loss_cfg`` for ``steps`` updates, ``policy`` in place.

    Returns one record per step ``0..steps`` (the state BEFORE update ``step``; the last is the
    final model; fewer records, the last with ``diverged`` True, if the loss or a parameter
    gradient stops being finite or a probability underflows float64): the :func:`distribution_summary`, the loss and its parts, and the gradient
    magnitudes ``grad_chosen`` = mean over pairs of |dL_i/dpi(y_w|x_i)| and ``grad_rejected``
    likewise for y_l. They are the seed's Corollary-1 quantities: each pair's loss L_i is seen as
    a function of the probabilities pi(y|x_i) of its own prompt, so dL_i/dpi = dL_i/dlogpi / pi,
    where dL_i/dlogpi is taken by autograd through the loss library (total derivative: it also
    counts y_gen's term when y_gen is the same response).
    """
    loss_cfg.validate()
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    params = list(policy.parameters())
    reference = pair_logps(reference_logp.detach()[pairs.prompt], pairs, y_gen)
    rows = torch.arange(len(pairs))
    records = []
    for step in range(steps + 1):
        logp = policy()
        logp_rows = logp[pairs.prompt]  # one row per pair, so d loss / d row i is pair i's alone
        loss, parts = preference_loss(pair_logps(logp_rows, pairs, y_gen), reference, loss_cfg)
        grad_rows, *param_grads = torch.autograd.grad(loss, [logp_rows, *params])
        # The loss is the mean over pairs, so pair i's own gradient is len(pairs) times its share.
        dloss_dprob = len(pairs) * grad_rows / logp_rows.detach().exp()
        record = {"step": step, "loss_value": float(loss.detach())}
        record.update({f"part_{k}": _scalar(v) for k, v in parts.items() if k != "loss"})
        record.update(distribution_summary(logp))
        record["grad_chosen"] = float(dloss_dprob[rows, pairs.chosen].abs().mean())
        record["grad_rejected"] = float(dloss_dprob[rows, pairs.rejected].abs().mean())
        # An unbounded loss (minll's alpha f(r) logp(y_gen)) can run away; stop at the first
        # non-finite loss or parameter gradient instead of training on garbage.
        # Likewise once a probability underflows float64 (minll drives log pi(y_gen) to -inf):
        # from then on the recorded probabilities are exact zeros and the run means nothing.
        finite = (
            bool(torch.isfinite(loss))
            and all(bool(torch.isfinite(g).all()) for g in param_grads)
            and float(logp.detach().min()) > UNDERFLOW_LOGP
        )
        record["diverged"] = not finite
        records.append(record)
        if step == steps or not finite:
            break
        for parameter, grad in zip(params, param_grads):
            parameter.grad = grad
        optimizer.step()
    return records


def _scalar(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().mean())
    return float(value)


TOY_CONFIG_KEYS = frozenset(
    {"seeds", "hidden", "sft_steps", "sft_lr", "steps", "lr", "pairs_per_prompt", "initial", "losses",
     "dynamics_loss"}  # dynamics_loss: which loss the dynamics/gradient figures show (rules only)
)


@dataclass(frozen=True)
class ToySettings:
    """Everything a toy run needs; mirrors ``config["toy"]``."""

    seeds: tuple[int, ...] = (0, 1, 2)
    hidden: int = 64
    sft_steps: int = 1000
    sft_lr: float = 1e-2
    steps: int = 500
    lr: float = 1e-3
    pairs_per_prompt: int = 8
    levels: InitialLevels = InitialLevels()
    losses: tuple[tuple[str, LossConfig], ...] = (("dpo", LossConfig(name="dpo")),)

    @classmethod
    def from_config(cls, toy: Mapping[str, Any]) -> "ToySettings":
        """Build from ``config["toy"]``; ``losses`` maps a label to LossConfig keyword arguments.
        A key this toy does not know stops the run with its name (a typo would otherwise be
        silently replaced by the default)."""
        unknown = sorted(set(toy) - TOY_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"config toy: unknown key(s) {unknown}; valid: {sorted(TOY_CONFIG_KEYS)}")
        losses = tuple(
            (label, LossConfig(**dict(spec))) for label, spec in dict(toy.get("losses", {})).items()
        )
        if not losses:
            raise ValueError("config toy.losses is empty: name at least one loss to train")
        for label, cfg in losses:
            try:
                cfg.validate()
            except ValueError as error:
                raise ValueError(f"config toy.losses.{label}: {error}") from error
        scalars = {
            key: toy[key]
            for key in ("hidden", "sft_steps", "sft_lr", "steps", "lr", "pairs_per_prompt")
            if key in toy
        }
        return cls(
            seeds=tuple(int(s) for s in toy.get("seeds", cls.seeds)),
            levels=InitialLevels(**dict(toy.get("initial", {}))),
            losses=losses,
            **scalars,
        )


def run_scenario(scenario: Scenario, seed: int, settings: ToySettings) -> tuple[pd.DataFrame, dict]:
    """Step 1 once, then step 2 with every loss of ``settings`` from that same reference model.

    Returns the per-step records of every loss and a dict describing the step-1 model."""
    target = initial_distribution(scenario, settings.levels)
    reference = build_policy(settings.hidden, seed)
    step1_kl = fit_distribution(reference, target, settings.sft_steps, settings.sft_lr)
    with torch.no_grad():
        reference_logp = reference()
    y_gen = greedy_responses(reference_logp)
    pairs = make_preference_pairs(settings.pairs_per_prompt, seed)
    frames = []
    for label, loss_cfg in settings.losses:
        policy = copy.deepcopy(reference)
        records = train_preference(
            policy, reference_logp, pairs, y_gen, loss_cfg, settings.steps, settings.lr
        )
        frame = pd.DataFrame.from_records(records)
        frame.insert(0, "loss", label)
        frames.append(frame)
    runs = pd.concat(frames, ignore_index=True)
    runs.insert(0, "seed", seed)
    runs.insert(0, "scenario", scenario.number)
    step1 = {
        "scenario": scenario.number,
        "seed": seed,
        "step1_kl": step1_kl,
        "y_gen": [int(y) for y in y_gen],
        **{f"step1_{k}": v for k, v in distribution_summary(reference_logp).items()},
        **{f"target_{k}": v for k, v in distribution_summary(target.log()).items()},
    }
    return runs, step1


def run_all(settings: ToySettings, scenarios: Iterable[Scenario] = SCENARIOS, progress=None):
    """Every scenario x seed x loss. Returns (per-step records, one step-1 row per scenario x seed).

    ``progress`` wraps the (scenario, seed) iterable, e.g. ``tqdm``."""
    jobs = [(scenario, seed) for scenario in scenarios for seed in settings.seeds]
    runs, step1 = [], []
    for scenario, seed in progress(jobs) if progress else jobs:
        frame, info = run_scenario(scenario, seed, settings)
        runs.append(frame)
        step1.append(info)
    return pd.concat(runs, ignore_index=True), pd.DataFrame.from_records(step1)


# ---------------------------------------------------------------------- summaries for the paper

SCENARIO_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four"}
FINAL_METRICS = ("p_chosen", "p_rejected", "p_unseen", "p_outside")


def per_run_summary(runs: pd.DataFrame, collapse_below: float = 1e-6) -> pd.DataFrame:
    """One row per (scenario, loss, seed): initial, peak and final values of the recorded
    probabilities, the step of the chosen peak, the lowest outside mass, the first step at
    which the rejected mass is below ``collapse_below`` (NaN if never), the initial and final
    gradient magnitudes and whether the run diverged (then "final" is its last valid state)."""

    def summarise(run: pd.DataFrame) -> pd.Series:
        run = run.sort_values("step")
        first, last = run.iloc[0], run.iloc[-1]
        peak_row = run.loc[run["p_chosen"].idxmax()]
        collapsed = run.loc[run["p_rejected"] < collapse_below, "step"]
        row = {f"{m}_initial": first[m] for m in FINAL_METRICS}
        row.update({f"{m}_final": last[m] for m in FINAL_METRICS})
        row.update(
            p_chosen_peak=peak_row["p_chosen"],
            peak_step=peak_row["step"],
            p_unseen_max=run["p_unseen"].max(),
            p_outside_min=run["p_outside"].min(),
            rejected_collapse_step=collapsed.min() if len(collapsed) else math.nan,
            # share of (pair, step) with r < 0, i.e. where a DPPO penalty is switched on
            r_negative_share=run["part_frac_r_neg"].mean() if "part_frac_r_neg" in run else math.nan,
            grad_chosen_initial=first["grad_chosen"],
            grad_rejected_initial=first["grad_rejected"],
            grad_chosen_final=last["grad_chosen"],
            grad_rejected_final=last["grad_rejected"],
            last_step=last["step"],
            diverged=bool(run["diverged"].any()),
        )
        return pd.Series(row)

    keys = ["scenario", "loss", "seed"]
    return runs.groupby(keys, sort=False)[list(runs.columns.difference(keys))].apply(summarise).reset_index()


def final_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (scenario, loss): mean and standard deviation over seeds of :func:`per_run_summary`,
    and how many seeds ran and diverged. Losses keep their configured order."""
    summary = per_run_summary(runs)
    numeric = [c for c in summary.columns if c not in ("scenario", "loss", "seed", "diverged")]
    grouped = summary.groupby(["scenario", "loss"], sort=False)
    table = grouped[numeric].mean().add_suffix("_mean").join(grouped[numeric].std(ddof=0).add_suffix("_sd"))
    table["n_seeds"] = grouped.size()
    table["n_diverged"] = grouped["diverged"].sum().astype(int)
    return table.reset_index().sort_values("scenario", kind="stable").reset_index(drop=True)


def property_checks(table: pd.DataFrame, loss: str = "dpo", min_fall: float = 0.05) -> pd.DataFrame:
    """The seed's three properties, measured per scenario on the seed means of ``loss``:

    - drastic drop: the rejected mass falls by more decades than the chosen probability
      moves in either direction (log10 ratios initial -> final);
    - degradation: the chosen probability falls after its peak, by more than ``min_fall``
      (absolute) by the end of training;
    - dispersion: the mass on the two unseen responses ends above its initial value
      (``dispersion_unseen``), or, in the wider reading (every response outside the prompt's
      own pairs, i.e. also the other prompts' optimal responses), the outside mass climbs back
      by more than ``min_fall`` from its lowest point (``dispersion_outside``).
    """
    rows = []
    for _, row in table[table["loss"] == loss].iterrows():
        rejected_decades = math.log10(row["p_rejected_initial_mean"] / row["p_rejected_final_mean"])
        chosen_decades = abs(math.log10(row["p_chosen_final_mean"] / row["p_chosen_initial_mean"]))
        fall = row["p_chosen_peak_mean"] - row["p_chosen_final_mean"]
        rows.append(
            {
                "scenario": int(row["scenario"]),
                "loss": loss,
                "rejected_decades": rejected_decades,
                "chosen_decades": chosen_decades,
                "drastic_drop": rejected_decades > chosen_decades,
                "chosen_fall_after_peak": fall,
                "degradation": fall > min_fall,
                "dispersion_unseen": row["p_unseen_final_mean"] > row["p_unseen_initial_mean"],
                "outside_rise_from_min": row["p_outside_final_mean"] - row["p_outside_min_mean"],
                "dispersion_outside": row["p_outside_final_mean"] - row["p_outside_min_mean"] > min_fall,
            }
        )
    return pd.DataFrame(rows)


def camel(label: str) -> str:
    """LaTeX macro names take letters only: ``dpo_sft`` -> ``DpoSft``, ``minll2`` -> ``Minll``."""
    words = "".join(ch if ch.isalpha() else " " for ch in label).split()
    if not words:
        raise ValueError(f"loss label {label!r} has no letters to build a LaTeX macro name from")
    return "".join(w[:1].upper() + w[1:] for w in words)


def latex_number(value: float) -> str:
    """Two significant digits; tiny or huge values as m x 10^e (math-safe in text mode)."""
    if value != value:  # NaN
        return "n/a"
    if math.isinf(value):
        return r"\ensuremath{\infty}" if value > 0 else r"\ensuremath{-\infty}"
    if value == 0:
        return "0"
    if 0.01 <= abs(value) < 1000:
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return rf"\ensuremath{{{mantissa}\times 10^{{{int(exponent)}}}}}"


# The hyper-parameters each loss actually uses (for the settings macros).
LOSS_FIELDS = {
    "dpo": ("beta",),
    "ipo": ("tau",),
    "slic": ("slic_delta", "slic_lambda"),
    "flex_dpo": ("beta_w", "beta_l"),
    "dpo_sft": ("beta", "sft_lambda"),
    "minll": ("beta", "alpha"),
    "unll": ("beta", "alpha"),
    "conll": ("beta", "alpha"),
}

MACRO_METRICS = {
    "ChosenInitial": "p_chosen_initial_mean",
    "ChosenPeak": "p_chosen_peak_mean",
    "ChosenPeakStep": "peak_step_mean",
    "ChosenFinal": "p_chosen_final_mean",
    "RejectedInitial": "p_rejected_initial_mean",
    "RejectedFinal": "p_rejected_final_mean",
    "UnseenInitial": "p_unseen_initial_mean",
    "UnseenFinal": "p_unseen_final_mean",
    "OutsideInitial": "p_outside_initial_mean",
    "OutsideMin": "p_outside_min_mean",
    "OutsideFinal": "p_outside_final_mean",
    "RejectedCollapseStep": "rejected_collapse_step_mean",
    "GradChosenInitial": "grad_chosen_initial_mean",
    "GradRejectedInitial": "grad_rejected_initial_mean",
    "GradChosenFinal": "grad_chosen_final_mean",
    "GradRejectedFinal": "grad_rejected_final_mean",
    "RNegativeShare": "r_negative_share_mean",
    "Diverged": "n_diverged",
}


def _step_text(value: float) -> str:
    return "never" if value != value else str(round(value))


def latex_macros(table: pd.DataFrame, checks: pd.DataFrame, settings: ToySettings) -> str:
    """``\\newcommand`` lines for every number the toy section quotes, so none is typed by hand:
    ``\\toyScen<One..Four><Loss><Metric>``, the property verdicts ``\\toyScen<N>Dpo<Property>``
    (yes/no), and the run settings ``\\toySeeds``, ``\\toySteps`` ..."""
    lines = ["% Generated by dppo.toy.latex_macros; do not edit."]

    def define(name: str, value: str) -> None:
        lines.append(rf"\newcommand{{\{name}}}{{{value}}}")

    for _, row in table.iterrows():
        prefix = f"toyScen{SCENARIO_WORDS[int(row['scenario'])]}{camel(row['loss'])}"
        for suffix, column in MACRO_METRICS.items():
            value = row[column]
            define(prefix + suffix, _step_text(value) if suffix in ("Diverged", "ChosenPeakStep", "RejectedCollapseStep") else latex_number(value))
    for _, row in checks.iterrows():
        prefix = f"toyScen{SCENARIO_WORDS[int(row['scenario'])]}{camel(row['loss'])}"
        for suffix, column in (
            ("DrasticDrop", "drastic_drop"),
            ("Degradation", "degradation"),
            ("DispersionUnseen", "dispersion_unseen"),
            ("DispersionOutside", "dispersion_outside"),
        ):
            define(prefix + suffix, "yes" if row[column] else "no")
        define(prefix + "RejectedDecades", f"{row['rejected_decades']:.0f}")
        define(prefix + "ChosenDecades", f"{row['chosen_decades']:.2f}")
    for loss in dict.fromkeys(table["loss"]):
        rows = table[table["loss"] == loss].set_index("scenario")
        for what, column in (("Peak", "p_chosen_peak_mean"), ("Final", "p_chosen_final_mean")):
            define(f"toy{camel(loss)}Highest{what}Scenario", str(int(rows[column].idxmax())))
    define("toyNumSeeds", str(len(settings.seeds)))
    define("toySteps", str(settings.steps))
    define("toyLr", latex_number(settings.lr))
    define("toyHidden", str(settings.hidden))
    define("toySftSteps", str(settings.sft_steps))
    define("toyPairsPerPrompt", str(settings.pairs_per_prompt))
    for name, value in vars(settings.levels).items():
        define("toyLevel" + camel(name), latex_number(value))
    for label, cfg in settings.losses:
        for field in LOSS_FIELDS[cfg.name]:
            define(f"toy{camel(label)}{camel(field)}", latex_number(getattr(cfg, field)))
    return "\n".join(lines) + "\n"


def latex_final_table(table: pd.DataFrame) -> str:
    """A tabular of the final probabilities (mean +- sd over seeds) per scenario and loss."""

    def cell(row: pd.Series, metric: str) -> str:
        # The sd of a probability to two decimals: a spread of 1e-30 reads as none.
        return f"{latex_number(row[metric + '_mean'])} $\\pm$ {row[metric + '_sd']:.2f}"

    lines = [
        r"\begin{tabular}{llccccc}",
        r"\hline",
        r"Scen. & Loss & peak $\pi(y^*)$ & final $\pi(y^*)$ & rejected mass & unseen mass & outside mass \\",
        r"\hline",
    ]
    previous = None
    for _, row in table.iterrows():
        scenario = int(row["scenario"])
        if previous is not None and scenario != previous:
            lines.append(r"\hline")
        mark = r"$^\dagger$" if row["n_diverged"] else ""
        loss = row["loss"].replace("_", r"\_") + mark
        lines.append(
            f"{scenario if scenario != previous else ''} & {loss} & {cell(row, 'p_chosen_peak')} & "
            f"{cell(row, 'p_chosen_final')} & {cell(row, 'p_rejected_final')} & "
            f"{cell(row, 'p_unseen_final')} & {cell(row, 'p_outside_final')} \\\\"
        )
        previous = scenario
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
