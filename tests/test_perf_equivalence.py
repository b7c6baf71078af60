"""The speed-ups change no numbers: the shared-prompt forward gives the same log-probs, losses,
metrics and gradients as the concatenated forward (and as an unbatched loop), and length-grouped
batches only change which rows share a batch."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from numerics import assert_as_accurate_as
from test_logprobs import param_grads, tiny_causal_lm, unbatched_sums, unbatched_token_logps

from dppo.settings import Experiment, LossSettings, OptimSettings
from dppo.train.batching import GEN_KEY, RESPONSE_KEYS, packed_lengths
from dppo.train.logprobs import ResponseScorer, as_response_logps, can_share_prompt, gated_logps, response_logps
from dppo.train.losses import ResponseLogps, preference_loss
from dppo.train.preference import PreferenceTask, collate, policy_logps
from dppo.train.schedule import batch_order

PAD = 0
# Every prompt has >= 2 tokens (a cached prefix); uneven prompt and response lengths, K = 3.
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 40]]
RESPONSES = [
    [[11, 12], [13, 14, 15, 16], [17]],
    [[18, 19, 20], [21], [22, 23, 24, 25, 26]],
    [[27, 28, 29, 30], [31, 32], [33, 34, 35]],
]
REF = torch.tensor([[-40.0, -52.0, -20.0], [-61.0, -18.0, -95.0], [-70.0, -41.0, -55.0]])
LOSSES = [
    LossSettings(name="dpo"),
    LossSettings(name="unll", f="linear", alpha=0.3, unll_level="token_sum"),
    LossSettings(name="minll", f="quadratic", alpha=0.2),
    LossSettings(name="conll", f="sqrt", alpha=0.5),
]


@pytest.fixture(scope="module", params=("llama", "gpt2"))
def model(request):
    return tiny_causal_lm(request.param)


def count_forwards(model):
    """Number of model calls made inside the ``with`` block (a forward pre-hook)."""

    class Counter:
        def __enter__(self):
            self.calls = 0
            self.handle = model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
            return self

        def __exit__(self, *exc):
            self.handle.remove()

    return Counter()


@pytest.mark.parametrize("padding_side", ("left", "right"))
def test_shared_prompt_matches_concatenated_and_the_loop(model, padding_side):
    assert can_share_prompt(model, PROMPTS, RESPONSES)
    with torch.no_grad(), count_forwards(model) as counter:
        shared = response_logps(model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2, padding_side=padding_side)
    assert counter.calls == 2  # prefix pass + continuation pass: the shared path really ran
    with torch.no_grad(), count_forwards(model) as counter:
        concatenated = response_logps(
            model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2, padding_side=padding_side, share_prompt=False
        )
        looped = unbatched_sums(model, PROMPTS, RESPONSES)
    assert counter.calls == 1 + 9  # one concatenated forward, then the 9 unbatched sequences
    assert torch.allclose(shared.sums, concatenated.sums, atol=1e-5, rtol=0)
    assert torch.allclose(shared.sums, looped, atol=1e-5, rtol=0)
    assert torch.equal(shared.lengths, concatenated.lengths)
    assert torch.equal(shared.token_mask, concatenated.token_mask)
    assert torch.allclose(shared.token_logps, concatenated.token_logps, atol=1e-6, rtol=0)
    for b, (prompt, group) in enumerate(zip(PROMPTS, RESPONSES)):
        with torch.no_grad():
            expected = unbatched_token_logps(model, prompt, group[2])
        assert torch.allclose(shared.token_logps[b, : len(expected)], expected, atol=1e-5, rtol=0)
    assert shared.sums.std() > 0.1  # a real distribution, not a constant


@pytest.mark.parametrize("padding_side", ("left", "right"))
def test_shared_prompt_gradients_match(model, padding_side):
    weights = torch.tensor([[1.0, -0.5, 0.25], [0.3, 2.0, -1.0], [-0.7, 0.1, 1.5]])
    shared = response_logps(model, PROMPTS, RESPONSES, PAD, padding_side=padding_side)
    concatenated = response_logps(model, PROMPTS, RESPONSES, PAD, padding_side=padding_side, share_prompt=False)
    got = param_grads(model, (weights * shared.sums).sum())
    expected = param_grads(model, (weights * concatenated.sums).sum())
    assert got.abs().max() > 0
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def loss_and_parts(model, loss_config: LossSettings, share_prompt: bool):
    token_level = loss_config.token_level
    policy = as_response_logps(response_logps(
        model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2 if token_level else None, share_prompt=share_prompt,
    ))
    reference = ResponseLogps(
        chosen=REF[:, 0], rejected=REF[:, 1], gen=REF[:, 2],
        chosen_len=policy.chosen_len, rejected_len=policy.rejected_len, gen_len=policy.gen_len,
    )
    return preference_loss(policy, reference, loss_config)


@pytest.mark.parametrize("loss_config", LOSSES, ids=lambda c: c.name)
def test_losses_metrics_and_gradients_identical_before_and_after(model, loss_config):
    before, before_parts = loss_and_parts(model, loss_config, share_prompt=False)
    after, after_parts = loss_and_parts(model, loss_config, share_prompt=True)
    # exact: the concatenated path in float64; the shared-prompt path must be as accurate as the
    # concatenated one is in float32 on this machine's kernels
    model64 = copy.deepcopy(model).double()
    exact, exact_parts = loss_and_parts(model64, loss_config, share_prompt=False)
    assert_as_accurate_as(after, before, exact, "loss")
    assert after_parts.keys() == before_parts.keys() and len(after_parts) > 3
    for key in before_parts:
        assert_as_accurate_as(after_parts[key], before_parts[key], exact_parts[key], key)
    got, expected = param_grads(model, after), param_grads(model, before)
    assert expected.abs().max() > 0
    assert_as_accurate_as(got, expected, param_grads(model64, exact), "gradients")


def test_prompts_of_one_token_and_activation_checkpointing_fall_back(model):
    prompts = [[1], *PROMPTS[1:]]
    assert not can_share_prompt(model, prompts, RESPONSES)
    assert not can_share_prompt(model, PROMPTS, [group[:1] for group in RESPONSES])  # K = 1: nothing to share
    with torch.no_grad(), count_forwards(model) as counter:
        got = response_logps(model, prompts, RESPONSES, PAD).sums
    assert counter.calls == 1
    with torch.no_grad():
        assert torch.allclose(got, unbatched_sums(model, prompts, RESPONSES), atol=1e-5, rtol=0)

    # A checkpointed layer reruns its forward in backward and would append to the cache twice.
    checkpointed = tiny_causal_lm("llama").train()
    checkpointed.activation_checkpointing_enable()
    assert not can_share_prompt(checkpointed, PROMPTS, RESPONSES)
    with count_forwards(checkpointed) as counter:
        sums = response_logps(checkpointed, PROMPTS, RESPONSES, PAD).sums
    assert counter.calls == 1
    reference = tiny_causal_lm("llama")
    shared = response_logps(reference, PROMPTS, RESPONSES, PAD).sums
    assert torch.allclose(sums, shared, atol=1e-5, rtol=0)
    assert torch.allclose(param_grads(checkpointed, sums.sum()), param_grads(reference, shared.sum()), atol=1e-5, rtol=1e-4)


def records():
    return [
        {"prompt_ids": p, "chosen_ids": g[0], "rejected_ids": g[1], "gen_ids": g[2],
         "ref_chosen": float(r[0]), "ref_rejected": float(r[1]), "ref_gen": float(r[2])}
        for p, g, r in zip(PROMPTS, RESPONSES, REF.tolist())
    ]


def make_task(loss_config, rows=None, track_gen=False):
    experiment = Experiment(name="perf", loss=loss_config, track_gen=track_gen)
    return PreferenceTask(experiment, rows or records(), PAD, probe=[])


@pytest.mark.parametrize("loss_config", LOSSES, ids=lambda c: c.name)
def test_task_loss_and_gradient_equal_the_concatenated_computation(loss_config):
    model = tiny_causal_lm("llama")
    task = make_task(loss_config)
    with count_forwards(model) as counter:
        loss, parts = task.loss(model, records())
    expected, expected_parts = loss_and_parts(model, loss_config, share_prompt=False)
    if loss_config.needs_gen:
        # prompts, pair, then y_gen with autograd on the rows f(r) weighs; on this batch f(r)
        # is zero on some rows (r > 0), whose y_gen is not scored (not tracked)
        assert counter.calls == 3
    else:
        assert counter.calls == 2  # prompts once, then the pair
    assert torch.allclose(loss, expected, atol=1e-6, rtol=1e-5)
    assert parts["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    got = param_grads(model, loss)
    assert torch.allclose(got, param_grads(model, expected), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss_config", [c for c in LOSSES if c.needs_gen], ids=lambda c: c.name)
def test_untracked_gen_gives_the_tracked_loss_and_gradient(loss_config):
    """Without ``track_gen`` y_gen is scored only where f(r) > 0: one forward fewer, the same
    loss, parts and gradient; y_gen's own parts are not logged (they would cover some rows only)."""
    model = tiny_causal_lm("llama")
    tracked, untracked = make_task(loss_config, track_gen=True), make_task(loss_config, track_gen=False)
    with count_forwards(model) as counter:
        loss_t, parts_t = tracked.loss(model, records())
    assert counter.calls == 4  # prompts, pair, y_gen with and without autograd
    with count_forwards(model) as counter:
        loss_u, parts_u = untracked.loss(model, records())
    assert counter.calls == 3
    assert torch.allclose(loss_u, loss_t, atol=1e-6, rtol=1e-5)
    assert {"logp_gen", "reward_gen"} <= parts_t.keys()
    assert parts_u.keys() == parts_t.keys() - {"logp_gen", "reward_gen"}
    for key in parts_u:
        assert torch.allclose(parts_u[key], parts_t[key], atol=1e-5, rtol=1e-5), key
    assert torch.allclose(param_grads(model, loss_u), param_grads(model, loss_t), atol=1e-6, rtol=1e-4)


def test_untracked_gen_with_no_penalized_row_scores_no_gen():
    model = tiny_causal_lm("llama")
    quiet = replace(LOSSES[1], alpha=0.0)  # f(r) never weighs y_gen
    batch = collate(records())
    with count_forwards(model) as counter:
        policy, reference, _ = policy_logps(model, batch, quiet, track_gen=False, pad=PAD)
    assert counter.calls == 2  # prompts, pair
    assert torch.equal(policy.gen, reference.gen) and not policy.gen_scored.any()
    assert not policy.gen_token_mask.any()
    loss, parts = preference_loss(policy, reference, quiet)
    assert torch.isfinite(loss) and parts["penalty"].item() == 0.0


def pair_and_gen(model, prompts, mask, share_prompt=True):
    """(y_w, y_l) sums with autograd, then y_gen gated by ``mask``, on one scorer."""
    pairs, gens = [g[:2] for g in RESPONSES], [g[2] for g in RESPONSES]
    scorer = ResponseScorer(model, prompts, PAD, share_prompt=share_prompt)
    pair = scorer.score(list(range(len(prompts))), pairs)
    gen_sums, gen_tokens, gen_mask = gated_logps(scorer, gens, mask, token_logps=True)
    return torch.cat([pair.sums, gen_sums.unsqueeze(1)], dim=1), gen_tokens, gen_mask


@pytest.mark.parametrize("mask", ([True, False, True], [True] * 3, [False] * 3), ids=("mixed", "all", "none"))
def test_gated_gen_logps_equal_response_logps(model, mask):
    with count_forwards(model) as counter:
        sums, tokens, token_mask = pair_and_gen(model, PROMPTS, mask)
    assert counter.calls == 2 + len(set(mask))  # prompts, pair, one pass per kind of y_gen row
    full = response_logps(model, PROMPTS, RESPONSES, PAD, return_token_logps_for=2)
    assert torch.allclose(sums, full.sums, atol=1e-5, rtol=0)
    assert torch.equal(token_mask, full.token_mask)
    assert torch.allclose(tokens, full.token_logps, atol=1e-6, rtol=0)
    # Gradients: equal wherever y_gen is weighted; the unweighted rows have no y_gen graph.
    params = list(model.parameters())
    for b, weighted in enumerate(mask):
        grads = torch.autograd.grad(sums[b, 2] + tokens[b].sum(), params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().max() > 0 for g in grads) == weighted
    weights = torch.tensor([[1.0, -0.5, 0.25], [0.3, 2.0, -1.0], [-0.7, 0.1, 1.5]])
    weights[:, 2] *= torch.tensor(mask, dtype=torch.float32)
    assert torch.allclose(param_grads(model, (weights * sums).sum()),
                          param_grads(model, (weights * full.sums).sum()), atol=1e-5, rtol=1e-4)


def test_gated_gen_logps_without_a_shared_prompt(model):
    prompts = [[1], *PROMPTS[1:]]  # a one-token prompt: concatenated forwards
    sums, tokens, _ = pair_and_gen(model, prompts, [False, True, False], share_prompt=False)
    full = response_logps(model, prompts, RESPONSES, PAD, return_token_logps_for=2)
    assert torch.allclose(sums, full.sums, atol=1e-5, rtol=0)
    assert torch.allclose(tokens, full.token_logps, atol=1e-6, rtol=0)
    params = list(model.parameters())
    for b, weighted in enumerate([False, True, False]):
        grads = torch.autograd.grad(sums[b, 2], params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().max() > 0 for g in grads) == weighted


def test_tracked_gen_runs_on_the_shared_prompts_without_autograd():
    model = tiny_causal_lm("llama")
    task = make_task(LOSSES[0], track_gen=True)
    batch = collate(records())
    with count_forwards(model) as counter:
        policy, _, _ = policy_logps(model, batch, LOSSES[0], track_gen=True, pad=PAD)
    assert counter.calls == 3  # prompts, pair, y_gen (no grad)
    full = response_logps(model, PROMPTS, RESPONSES, PAD).sums
    assert torch.allclose(policy.gen, full[:, 2], atol=1e-5, rtol=0)
    grads = torch.autograd.grad(policy.gen.sum(), list(model.parameters()), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)
    loss, _ = task.loss(model, records())
    assert torch.allclose(loss, loss_and_parts(model, LOSSES[0], share_prompt=False)[0], atol=1e-6, rtol=1e-5)


def test_the_gate_is_the_penalty_weight():
    from dppo.train.losses import trigger

    model = tiny_causal_lm("llama")
    pair = response_logps(model, PROMPTS, [g[:2] for g in RESPONSES], PAD)
    lengths = {"chosen_len": pair.lengths[:, 0], "rejected_len": pair.lengths[:, 1]}
    policy = ResponseLogps(chosen=pair.sums[:, 0], rejected=pair.sums[:, 1], **lengths)
    reference = ResponseLogps(chosen=REF[:, 0], rejected=REF[:, 1], **lengths)
    r = (pair.sums[:, 0] - pair.sums[:, 1]).detach()
    assert (r > 0).any() and (r < 0).any()  # the fixed batch has both kinds of rows

    def gate(cfg):
        return trigger(policy, reference, cfg).penalized(cfg).tolist()

    assert gate(LOSSES[1]) == (r < 0).tolist()  # linear f: max(-r, 0)
    assert not any(gate(replace(LOSSES[1], alpha=0.0)))
    r_implicit = 0.5 * ((pair.sums[:, 0] - REF[:, 0]) - (pair.sums[:, 1] - REF[:, 1]))
    assert gate(replace(LOSSES[1], r_mode="implicit", beta=0.5)) == (r_implicit < 0).tolist()
    assert all(gate(replace(LOSSES[1], f="expectile", zeta=0.5)))  # |zeta - 1{r<0}| r^2 > 0 for r != 0


# ----------------------------------------------------------------------------- length grouping


def synthetic_records(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def ids(lo, hi):
        return [1] * int(torch.randint(lo, hi + 1, (1,), generator=g))

    return [{"prompt_ids": ids(2, 60), "chosen_ids": ids(1, 40), "rejected_ids": ids(1, 40), "gen_ids": ids(1, 80)}
            for _ in range(n)]


def padding_fraction(records, batches, with_gen: bool) -> float:
    """Share of the packed (B*K, width) token grid that is padding, over ``batches`` (what
    group_by_length is for)."""
    keys = (*RESPONSE_KEYS, GEN_KEY) if with_gen else RESPONSE_KEYS
    real = padded = 0
    for batch in batches:
        widths = [len(records[i]["prompt_ids"]) + len(records[i][k]) for i in batch for k in keys]
        real += sum(widths)
        padded += len(widths) * max(widths)
    return 1.0 - real / padded


def test_packed_lengths_and_padding_fraction_by_hand():
    rows = records()
    assert packed_lengths(rows, with_gen=False) == [3 + 4, 6 + 3, 2 + 4]
    assert packed_lengths(rows, with_gen=True) == [3 + 4, 6 + 5, 2 + 4]
    # batch {0, 2}, K = 2: widths 5, 7, 6, 4 -> grid 4 x 7 = 28 with 22 real tokens
    assert padding_fraction(rows, [[0, 2]], with_gen=False) == pytest.approx(1 - 22 / 28)
    # one row per batch, y_gen too: row 1 widths 9, 7, 11 -> 27 of 33
    assert padding_fraction(rows, [[1]], with_gen=True) == pytest.approx(1 - 27 / 33)


def test_length_grouped_batches_are_a_permutation_with_less_padding():
    rows, batch = synthetic_records(400), 8
    opt = OptimSettings(batch_size=batch, group_by_length=True, seed=0)
    lengths = packed_lengths(rows, with_gen=True)
    order = batch_order(len(rows), opt, epoch=0, lengths=lengths)
    assert sorted(order) == list(range(len(rows)))
    grouped = [order[i : i + batch] for i in range(0, len(order), batch)]
    shuffled = batch_order(len(rows), replace(opt, group_by_length=False), epoch=0, lengths=None)
    random_batches = [shuffled[i : i + batch] for i in range(0, len(shuffled), batch)]
    assert padding_fraction(rows, grouped, with_gen=True) < 0.75 * padding_fraction(rows, random_batches, with_gen=True)
    # a function of (seed, epoch) only: the same order again, another epoch or seed another one
    assert batch_order(len(rows), opt, epoch=0, lengths=lengths) == order
    assert batch_order(len(rows), opt, epoch=1, lengths=lengths) != order
    assert batch_order(len(rows), replace(opt, seed=1), epoch=0, lengths=lengths) != order


def test_the_task_groups_by_the_widths_its_forward_packs():
    rows = synthetic_records(40)
    assert make_task(LOSSES[1], rows).lengths() == packed_lengths(rows, with_gen=True)  # unll forwards y_gen
    assert make_task(LOSSES[0], rows).lengths() == packed_lengths(rows, with_gen=False)
