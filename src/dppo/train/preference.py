"""Preference training (DPO, the DPPO penalties and the 3D-properties variants).

One step flows one way: the policy's log-probs of y_w and y_l (:class:`dppo.train.logprobs.ResponseScorer`,
prompts encoded once), then the trigger r and f(r) (:func:`dppo.train.losses.trigger`, once), then y_gen,
with autograd only where the penalty weight alpha f(r) is not zero, then the loss
(:func:`dppo.train.losses.preference_loss`, given that trigger). The reference model never runs here:
its log-probs come from the cache of :mod:`dppo.train.reference`.
"""

from __future__ import annotations

import logging
import shutil
import zlib
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from dppo.runtime.io import atomic_output_dir, load_causal_lm, load_tokenizer, pad_token_id, weights_digest
from dppo.settings import Experiment, LossSettings
from dppo.train.batching import packed_lengths
from dppo.train.checkpoints import checkpoint_problem, last_checkpoint
from dppo.train.distributed import world
from dppo.train.logprobs import (
    ResponseBatchLogps,
    ResponseScorer,
    as_response_logps,
    can_share_prompt,
    check_inputs,
    gated_logps,
    response_logps,
)
from dppo.train.loop import train
from dppo.train.losses import ResponseLogps, Trigger, preference_loss, trigger
from dppo.train.publish import METRICS, publish_runs
from dppo.train.rounds import merged_metrics, round_steps, seed_file, split_by_seed
from dppo.train.rows import (
    REF_COLUMNS,
    load_training_rows,
    preference_records,
    subset_indices,
    with_penalized_response,
)
from dppo.train.schedule import total_steps

log = logging.getLogger(__name__)


def collate(rows: list[dict], device=None) -> dict:
    """Token lists stay lists (the log-prob forward packs them); reference log-probs become
    tensors on ``device``."""
    return {
        "rows": rows,
        **{column: torch.tensor([r[column] for r in rows], dtype=torch.float32, device=device) for column in REF_COLUMNS},
    }


def policy_logps(model, batch: dict, cfg: LossSettings, track_gen: bool,
                 pad: int) -> tuple[ResponseLogps, ResponseLogps, Trigger]:
    """The policy's and the cached reference's log-probs of one batch, and its trigger.

    y_gen is scored with autograd on the rows where the loss penalizes it (alpha f(r) not zero).
    With ``track_gen`` it is also scored, without autograd, on every other row, so that its
    log-prob can be logged; without, those rows are not scored at all and carry the reference's
    log-prob (D(y_gen) = 0; their penalty weight is zero, so the loss is the same)."""
    rows = batch["rows"]
    prompts = [row["prompt_ids"] for row in rows]
    pairs = [[row["chosen_ids"], row["rejected_ids"]] for row in rows]
    with_gen = cfg.needs_gen or track_gen
    gens = [row["gen_ids"] for row in rows] if with_gen else None
    responses = [[*pair, gen] for pair, gen in zip(pairs, gens)] if with_gen else pairs
    check_inputs(prompts, responses)
    shared = can_share_prompt(model, prompts, responses)
    scorer = ResponseScorer(model, prompts, pad, share_prompt=shared)
    pair = scorer.score(list(range(len(rows))), pairs)
    lengths = {"chosen_len": pair.lengths[:, 0], "rejected_len": pair.lengths[:, 1]}
    reference = ResponseLogps(chosen=batch["ref_chosen"], rejected=batch["ref_rejected"], **lengths)
    trig = trigger(ResponseLogps(chosen=pair.sums[:, 0], rejected=pair.sums[:, 1], **lengths), reference, cfg)
    if cfg.gate == "random":  # a control: as many rows weighed as much, chosen without their ranking
        trig = trig.shuffled(zlib.crc32(repr(prompts).encode()))
    if not with_gen:
        return as_response_logps(pair), reference, trig
    needs_grad = trig.penalized(cfg).tolist() if cfg.needs_gen else [False] * len(rows)
    scored = [True] * len(rows) if track_gen else needs_grad
    token_level = cfg.token_level
    gen_sums, gen_tokens, gen_mask = gated_logps(scorer, gens, needs_grad, token_level, scored)
    scored_mask = torch.tensor(scored, dtype=torch.bool, device=scorer.device)
    gen_sums = torch.where(scored_mask, gen_sums, batch["ref_gen"])
    both = ResponseBatchLogps(
        sums=torch.cat([pair.sums, gen_sums.unsqueeze(1)], dim=1),
        lengths=torch.tensor([[len(r) for r in group] for group in responses], dtype=torch.long, device=scorer.device),
        token_logps=gen_tokens, token_mask=gen_mask, token_logps_for=2 if token_level else None,
    )
    policy = as_response_logps(both)
    policy.gen_scored = None if track_gen else scored_mask
    reference.gen, reference.gen_len = batch["ref_gen"], policy.gen_len
    return policy, reference, trig


class PreferenceTask:
    """The preference loss of a batch (:func:`policy_logps` then :func:`dppo.train.losses.preference_loss`),
    for :func:`dppo.train.loop.train`; logs every loss part and, on fixed probe rows, the log-probs
    of y_w, y_l and y_gen."""

    def __init__(self, experiment: Experiment, rows: list[dict], pad: int, probe: list[dict]):
        self.experiment = experiment
        self.rows = rows
        self.pad = pad
        # Fixed rows whose log-probs are logged every `probe_every` steps: batch means mix
        # different rows (and, with length grouping, different lengths) at every step, so only
        # a fixed set shows how the likelihood of y_w, y_l and y_gen moves (3D-properties).
        self.probe = probe

    def loss(self, model, rows):
        batch = collate(rows, device=next(model.parameters()).device)
        cfg = self.experiment.loss
        policy, reference, trig = policy_logps(model, batch, cfg, self.experiment.track_gen, self.pad)
        return preference_loss(policy, reference, cfg, trig)

    def weight(self, rows) -> int:
        return len(rows)

    def lengths(self) -> list[int]:
        return packed_lengths(self.rows, with_gen=self.experiment.loss.needs_gen)

    @torch.no_grad()
    def step_metrics(self, model, step: int, total: int) -> dict[str, float]:
        """Mean log-probs of y_w, y_l and y_gen on the probe rows (eval mode, no grad)."""
        every = self.experiment.probe_every
        if not self.probe or not (step == 1 or step % every == 0 or step == total):
            return {}
        model.eval()
        responses = [[row["chosen_ids"], row["rejected_ids"], row["gen_ids"]] for row in self.probe]
        sums = response_logps(model, [row["prompt_ids"] for row in self.probe], responses, self.pad).sums.mean(dim=0)
        model.train()
        return {f"probe_logp_{name}": float(v) for name, v in zip(("chosen", "rejected", "gen"), sums)}


def train_seed(experiment: Experiment, seed: int, init_dir: Path, rows: pd.DataFrame, probe: pd.DataFrame | None,
               checkpoint_dir: Path, trust_remote_code: bool, max_steps: int, distributed: str = "ddp",
               part: dict | None = None) -> Path:
    """Train one seed of ``experiment``; returns its finished run directory (``final/`` model,
    ``metrics.jsonl``). A seed already finished by an earlier, killed job is not trained again.

    ``part``: one round of an on-policy run (:func:`round_job`): ``round`` (logged on every
    metrics line and kept in the record), ``start`` and ``stop`` (its steps of the whole run) and
    ``start_from`` (the previous round's state, or None for the first round)."""
    optim = replace(experiment.optim, seed=seed, max_steps=max_steps)
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(init_dir, trust_remote_code)
    model = load_causal_lm(init_dir, trust_remote_code, dtype=torch.float32)  # fp32 weights; bf16 autocast on GPUs
    records = preference_records(rows.to_dict("records"))
    probe_records = preference_records(probe.to_dict("records")) if probe is not None else []
    record = {"stage": "preference", "experiment": experiment.name, "seed": seed, "settings": experiment.to_dict(),
              "rows": len(records), "init": str(init_dir), "init_sha256": weights_digest(init_dir)}
    task = PreferenceTask(experiment, records, pad_token_id(tokenizer), probe_records)
    if part is None:
        return train(model, tokenizer, records, task, optim, checkpoint_dir, record, experiment.on_nonfinite,
                     distributed)
    record.update(round=part["round"], start_step=part["start"], stop_step=part["stop"])
    return train(model, tokenizer, records, task, optim, checkpoint_dir, record, experiment.on_nonfinite, distributed,
                 start_from=part["start_from"], stop_at=part["stop"])


def experiment_rows(experiment: Experiment, train_file, ygen_file, ref_file,
                    subset_seed: int) -> tuple[pd.DataFrame, pd.DataFrame | None, int]:
    """(the experiment's training rows, its probe rows or None, its ``max_steps``) from the
    prepared pairs, y_gen and the reference log-probs."""
    all_rows = with_penalized_response(load_training_rows(train_file, ygen_file, ref_file),
                                       experiment.loss.gen_source)
    try:
        rows = all_rows.iloc[subset_indices(len(all_rows), experiment.n_train, subset_seed)]
    except ValueError as err:
        raise ValueError(f"experiments.{experiment.name}.n_train: {err}") from None
    # The first rows of the same permutation: one probe set shared by every experiment, and
    # inside every subset of at least that size.
    n_probe = min(experiment.probe_rows, len(rows))
    probe = all_rows.iloc[subset_indices(len(all_rows), n_probe, subset_seed)] if n_probe else None
    max_steps = experiment.optim.max_steps
    if experiment.match_full_steps and experiment.n_train is not None:
        max_steps = total_steps(experiment.optim, len(all_rows))
    return rows, probe, max_steps


def experiment_job(experiment: dict, init_dir: str, train_file: str, ygen_file: str, ref_file: str,
                   out_dir: str, metrics_file: str, checkpoint_dir: str, subset_seed: int,
                   trust_remote_code: bool, distributed: str = "ddp") -> None:
    """Every seed of one experiment (``experiment``: :meth:`Experiment.to_dict`), from file
    paths only, so :func:`dppo.runtime.launch.run_job` can run it in-process or under torchrun.

    ``out_dir`` receives ``seed-<s>/`` (a model directory per seed), ``metrics_file`` every
    seed's per-step metrics (a ``seed`` field on each line); both appear only once every seed
    is done."""
    experiment = Experiment.from_dict(experiment)
    rows, probe, max_steps = experiment_rows(experiment, train_file, ygen_file, ref_file, subset_seed)
    log.info("experiment %s: %d training rows, %s optimizer steps, seeds %s, settings %s", experiment.name, len(rows),
             max_steps if max_steps > 0 else total_steps(experiment.optim, len(rows)), list(experiment.seeds),
             experiment.to_dict())
    runs = {}
    for seed in experiment.seeds:
        seed_init = Path(init_dir) if experiment.init == "sft" else Path(init_dir) / f"seed-{seed}"
        runs[seed] = train_seed(experiment, seed, seed_init, rows, probe, Path(checkpoint_dir) / f"seed-{seed}",
                                trust_remote_code, max_steps, distributed)
    publish_runs({f"seed-{seed}": run_dir for seed, run_dir in runs.items()}, out_dir, metrics_file, checkpoint_dir)


def _round_input(path: str, seed: int) -> str:
    """Round 1 reads the shared y_gen and reference files; later rounds a directory of per-seed files."""
    return str(seed_file(path, seed)) if Path(path).is_dir() else path


def round_job(experiment: dict, round_k: int, init_dir: str, state_dir: str | None, train_file: str, ygen: str,
              ref: str, out_dir: str, metrics_file: str, out_state: str | None, earlier_metrics: list[str],
              checkpoint_dir: str, subset_seed: int, trust_remote_code: bool, distributed: str = "ddp") -> None:
    """Round ``round_k`` of an on-policy experiment (:mod:`dppo.train.rounds`), every seed.

    Round 1 starts from the experiment's ``init`` (``init_dir``, as :func:`experiment_job`) on the
    SFT model's y_gen (``ygen``, ``ref``: files); round k >= 2 from round k-1's models
    (``init_dir/seed-<s>``) and states (``state_dir/seed-<s>``) on its own y_gen and reference
    log-probs (``ygen``, ``ref``: directories of ``seed-<s>.parquet``). An intermediate round
    writes its models (``out_dir/seed-<s>``), states (``out_state/seed-<s>``) and metrics; the
    last (``out_state`` None) the experiment's model directory and its metrics file, every
    round's lines (``earlier_metrics``, then its own) seed by seed."""
    experiment = Experiment.from_dict(experiment)
    last = out_state is None
    runs, states = {}, {}
    for seed in experiment.seeds:
        rows, probe, max_steps = experiment_rows(experiment, train_file, _round_input(ygen, seed),
                                                 _round_input(ref, seed), subset_seed)
        total = max_steps if max_steps > 0 else total_steps(experiment.optim, len(rows))
        try:
            start, stop = round_steps(total, experiment.rounds, round_k)
        except ValueError as err:
            raise ValueError(f"experiments.{experiment.name}.rounds: {err}") from None
        if last != (stop == total):
            raise ValueError(f"round {round_k} of {experiment.rounds}: outputs of {'the' if last else 'an'} "
                             f"{'last' if last else 'intermediate'} round for steps [{start}, {stop}) of {total}")
        if round_k == 1:
            seed_init, start_from = Path(init_dir) if experiment.init == "sft" else Path(init_dir) / f"seed-{seed}", None
        else:
            seed_init, start_from = Path(init_dir) / f"seed-{seed}", Path(state_dir) / f"seed-{seed}"
            problem = checkpoint_problem(start_from)
            if problem:
                raise ValueError(f"{start_from} (round {round_k - 1}'s state): {problem}; rerun that round")
        log.info("experiment %s, round %d of %d, seed %d: steps %d-%d of %d", experiment.name, round_k,
                 experiment.rounds, seed, start + 1, stop, total)
        part = {"round": round_k, "start": start, "stop": stop, "start_from": start_from}
        runs[seed] = train_seed(experiment, seed, seed_init, rows, probe, Path(checkpoint_dir) / f"seed-{seed}",
                                trust_remote_code, max_steps, distributed, part)
    if world()[0] != 0:  # rank 0 wrote the checkpoints and publishes
        return
    for seed, run_dir in runs.items():
        states[seed] = last_checkpoint(run_dir) if not last else None
        if not last and (states[seed] is None or states[seed].name != f"checkpoint-{stop}"):
            raise ValueError(f"{run_dir}: no checkpoint of step {stop} (the state the next round starts from)")
    if not last:
        with atomic_output_dir(out_state) as tmp:
            for seed, state in states.items():
                shutil.copytree(state, tmp / f"seed-{seed}")
    metrics = None
    if earlier_metrics:
        per_round = [split_by_seed(Path(path).read_bytes()) for path in earlier_metrics]
        per_round.append({seed: (run_dir / METRICS).read_bytes() for seed, run_dir in runs.items()})
        metrics = merged_metrics(per_round)
    publish_runs({f"seed-{seed}": run_dir for seed, run_dir in runs.items()}, out_dir, metrics_file, checkpoint_dir,
                 metrics)
