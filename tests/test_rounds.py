"""On-policy DPPO in rounds (dppo.train.rounds): the rounds tile one run's steps; with an
unchanged y_gen an R-round run ends bit-identical to its one-round twin (the same steps, rows
and schedule: the comparison is on-policy against off-policy and nothing else); round k's y_gen
is round k-1's greedy answer; a round killed half-way resumes from its own checkpoint,
bit-identical; the config refuses rounds where no y_gen is penalized."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pipeline import snakemake
from test_workflow import planned_jobs
from transformers import AutoModelForCausalLM

from dppo.config import ConfigError
from dppo.infer.answers import pregenerate_round
from dppo.settings import Experiment, GenerationSettings, LossSettings, OptimSettings
from dppo.train.errors import TrainingTerminated
from dppo.train.logprobs import response_logps
from dppo.train.preference import experiment_job, round_job
from dppo.train.reference import cache_reference_logps, cache_round_reference_logps
from dppo.train.rounds import drift_record, drift_table, merged_metrics, round_steps, split_by_seed

SEEDS = (0, 1)


# ----------------------------------------------------------------------------- fast: pure helpers and settings


@pytest.mark.parametrize("total, rounds", [(6, 3), (4, 3), (7, 2), (5, 5), (100, 7), (1, 1)])
def test_rounds_tile_the_run_and_the_last_ends_at_its_total(total, rounds):
    parts = [round_steps(total, rounds, k) for k in range(1, rounds + 1)]
    assert parts[0][0] == 0 and parts[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))  # no step twice, none left out
    assert all(stop > start for start, stop in parts)  # every round takes a step
    assert sum(stop - start for start, stop in parts) == total


def test_more_rounds_than_steps_is_refused():
    with pytest.raises(ValueError, match="3 rounds need at least one optimizer step each, but the run takes 2"):
        round_steps(2, 3, 1)


def test_merged_metrics_are_seed_by_seed_each_seed_in_round_order():
    line = lambda seed, step, k: json.dumps({"step": step, "seed": seed, "round": k}).encode() + b"\n"  # noqa: E731
    rounds = [b"".join(line(s, step, k) for s in SEEDS for step in steps)
              for k, steps in ((1, [1, 2]), (2, [3]), (3, [4, 5]))]
    merged = merged_metrics([split_by_seed(r) for r in rounds])
    parsed = [json.loads(x) for x in merged.splitlines()]
    assert [(r["seed"], r["step"], r["round"]) for r in parsed] == [
        (s, step, k) for s in SEEDS for k, steps in ((1, [1, 2]), (2, [3]), (3, [4, 5])) for step in steps]


def test_drift_record_counts_changed_answers_and_means():
    record = drift_record("x", 2, 1, [[1, 2], [3], [4, 5]], [[1, 2], [3, 3], [5]], [-1.0, -2.0, -3.0],
                          [-0.5, -1.5, -1.0])
    assert record["changed_share"] == pytest.approx(2 / 3)
    assert record["logp_old_mean"] == pytest.approx(-2.0) and record["logp_new_mean"] == pytest.approx(-1.0)
    assert (record["experiment"], record["round"], record["seed"], record["prompts"]) == ("x", 2, 1, 3)


def test_rounds_are_refused_where_no_y_gen_is_penalized():
    with pytest.raises(ConfigError, match=r"config key experiments\.d\.rounds: 3 rounds regenerate y_gen"):
        Experiment.from_flat("d", {"loss": "dpo", "rounds": 3}, "experiments.d")
    with pytest.raises(ConfigError, match=r"config key experiments\.c\.rounds"):
        Experiment.from_flat("c", {"loss": "unll", "gen_source": "rejected", "rounds": 2}, "experiments.c")
    with pytest.raises(ConfigError, match=r"experiments\.u\.refresh_max_new_tokens: only experiments with rounds > 1"):
        Experiment.from_flat("u", {"loss": "unll", "refresh_max_new_tokens": 8}, "experiments.u")
    with pytest.raises(ConfigError, match=r"experiments\.u\.rounds"):
        Experiment.from_flat("u", {"loss": "unll", "rounds": 0}, "experiments.u")


def test_a_one_round_experiment_gives_its_job_what_it_gave_before_rounds_existed():
    """Its params, run fingerprint and training record keep their bytes: nothing reruns."""
    one = Experiment.from_flat("u", {"loss": "unll"}, "experiments.u")
    assert "rounds" not in one.to_dict() and "refresh_max_new_tokens" not in one.to_dict()
    three = Experiment.from_flat("u", {"loss": "unll", "rounds": 3, "refresh_max_new_tokens": 8}, "experiments.u")
    assert Experiment.from_dict(three.to_dict()) == three and three.to_dict()["rounds"] == 3
    assert "refresh_max_new_tokens" not in three.training_dict()  # a training job never reads it
    assert Experiment.from_dict(three.training_dict()).rounds == 3


# ----------------------------------------------------------------------------- slow: real tiny models


def _experiment(rounds: int) -> Experiment:
    # 12 rows, batch 4, 2 epochs: 6 steps; 3 rounds take steps 1-2, 3-4 and 5-6 (linear decay over all 6)
    return Experiment(name="onp", loss=LossSettings(name="unll", alpha=0.5, f="linear"),
                      optim=OptimSettings(lr=5e-3, epochs=2, batch_size=4, save_steps=1, scheduler="linear",
                                          warmup_ratio=0.2),
                      seeds=SEEDS, probe_rows=3, probe_every=2, rounds=rounds)


def _per_seed_copies(src: Path, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True)
    for seed in SEEDS:
        shutil.copyfile(src, out_dir / f"seed-{seed}.parquet")
    return out_dir


def _run_rounds(experiment: Experiment, init: Path, pref: Path, ygen_of, ref_of, root: Path) -> Path:
    """Every round of ``experiment`` through :func:`round_job`, as workflow/rules/rounds.smk chains
    them (``ygen_of(k)``, ``ref_of(k)``: round k's y_gen and reference inputs)."""
    rounds = experiment.rounds
    for k in range(1, rounds + 1):
        last = k == rounds
        round_job(experiment.training_dict(), k, str(init if k == 1 else root / f"round-{k - 1}" / "model"),
                  None if k == 1 else str(root / f"round-{k - 1}" / "state"), str(pref), str(ygen_of(k)),
                  str(ref_of(k)), out_dir=str(root / ("model" if last else f"round-{k}/model")),
                  metrics_file=str(root / ("metrics.jsonl" if last else f"round-{k}/metrics.jsonl")),
                  out_state=None if last else str(root / f"round-{k}" / "state"),
                  earlier_metrics=[str(root / f"round-{j}" / "metrics.jsonl") for j in range(1, k)] if last else [],
                  checkpoint_dir=str(root / "ckpt" / f"round-{k}"), subset_seed=0, trust_remote_code=False)
    return root


def _lines(path: Path, drop=("round",)) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_rounds_on_an_unchanged_y_gen_end_bit_identical_to_the_one_round_run(tiny_model_dir, pref_files, tmp_path):
    """The proof that an R-round run has its one-round twin's budget: same steps, rows, learning
    rates and state carried over, so the only difference left is y_gen."""
    pref, ygen, _ = pref_files
    ref = tmp_path / "ref.parquet"
    cache_reference_logps(tiny_model_dir, pref, ygen, ref, batch_size=4)
    experiment_job(_experiment(1).to_dict(), str(tiny_model_dir), str(pref), str(ygen), str(ref),
                   out_dir=str(tmp_path / "one" / "model"), metrics_file=str(tmp_path / "one" / "metrics.jsonl"),
                   checkpoint_dir=str(tmp_path / "one" / "ckpt"), subset_seed=0, trust_remote_code=False)
    same_ygen, same_ref = _per_seed_copies(ygen, tmp_path / "ygen"), _per_seed_copies(ref, tmp_path / "ref")
    root = _run_rounds(_experiment(3), tiny_model_dir, pref, lambda k: ygen if k == 1 else same_ygen,
                       lambda k: ref if k == 1 else same_ref, tmp_path / "three")
    for seed in SEEDS:
        weights = f"seed-{seed}/model.safetensors"
        assert (root / "model" / weights).read_bytes() == (tmp_path / "one" / "model" / weights).read_bytes()
        record = json.loads((root / "model" / f"seed-{seed}" / "dppo_training.json").read_text())
        assert (record["round"], record["start_step"], record["stop_step"], record["steps"]) == (3, 4, 6, 6)
        assert record["resumed_from"] == str(root / "round-2" / "state" / f"seed-{seed}")  # round 2's end
        # round 2 really trained (its own weights differ from round 1's and the final ones)
        r1, r2 = (root / f"round-{k}" / "model" / weights for k in (1, 2))
        assert len({r1.read_bytes(), r2.read_bytes(), (root / "model" / weights).read_bytes()}) == 3
    # the metrics: every step once, in order, each with its round; else the one-round run's lines
    three = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert [(m["seed"], m["step"], m["round"]) for m in three] == [
        (s, step, (step + 1) // 2) for s in SEEDS for step in range(1, 7)]
    assert _lines(root / "metrics.jsonl") == _lines(tmp_path / "one" / "metrics.jsonl")
    assert not any((root / "ckpt").iterdir())  # every round dropped its checkpoints


@pytest.mark.slow
def test_a_round_killed_half_way_resumes_from_its_own_checkpoint_bit_identical(tiny_model_dir, pref_files, tmp_path,
                                                                              monkeypatch):
    """Round 2 (steps 3-4) stopped by a time limit (SIGTERM from dppo.train.faults) after step 3:
    it checkpoints step 3 in its own run directory, and its rerun resumes there, not from round
    1's state, and ends where the uninterrupted rounds end."""
    pref, ygen, _ = pref_files
    ref = tmp_path / "ref.parquet"
    cache_reference_logps(tiny_model_dir, pref, ygen, ref, batch_size=4)
    # a y_gen of round 2 and 3 that differs from round 1's: the rounds run on other rows than round 1
    moved = pd.read_parquet(ygen).assign(gen_ids=lambda f: [list(g)[::-1] for g in f["gen_ids"]])
    moved.to_parquet(tmp_path / "moved.parquet")
    cache_reference_logps(tiny_model_dir, pref, tmp_path / "moved.parquet", tmp_path / "moved_ref.parquet", 4)
    later_ygen = _per_seed_copies(tmp_path / "moved.parquet", tmp_path / "ygen")
    later_ref = _per_seed_copies(tmp_path / "moved_ref.parquet", tmp_path / "ref")
    ygen_of, ref_of = (lambda k: ygen if k == 1 else later_ygen), (lambda k: ref if k == 1 else later_ref)
    uninterrupted = _run_rounds(_experiment(3), tiny_model_dir, pref, ygen_of, ref_of, tmp_path / "clean")

    killed = tmp_path / "killed"
    experiment = _experiment(3)
    monkeypatch.setenv("DPPO_FAULT_RUN", "onp")
    monkeypatch.setenv("DPPO_FAULT_AT_STEP", "3")
    monkeypatch.setenv("DPPO_FAULT_SIGNAL", "SIGTERM")
    # round 1 runs steps 1-2 (the fault at step 3 is not in it)
    round_job(experiment.training_dict(), 1, str(tiny_model_dir), None, str(pref), str(ygen), str(ref),
              out_dir=str(killed / "round-1/model"), metrics_file=str(killed / "round-1/metrics.jsonl"),
              out_state=str(killed / "round-1/state"), earlier_metrics=[],
              checkpoint_dir=str(killed / "ckpt/round-1"), subset_seed=0, trust_remote_code=False)
    args = (experiment.training_dict(), 2, str(killed / "round-1/model"), str(killed / "round-1/state"), str(pref),
            str(later_ygen), str(later_ref))
    kwargs = dict(out_dir=str(killed / "round-2/model"), metrics_file=str(killed / "round-2/metrics.jsonl"),
                  out_state=str(killed / "round-2/state"), earlier_metrics=[],
                  checkpoint_dir=str(killed / "ckpt/round-2"), subset_seed=0, trust_remote_code=False)
    with pytest.raises(TrainingTerminated, match="at step 3"):
        round_job(*args, **kwargs)
    [run_dir] = (killed / "ckpt/round-2/seed-0").glob("run-*")
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3"]
    assert not (killed / "round-2/model").exists()
    monkeypatch.delenv("DPPO_FAULT_RUN")
    round_job(*args, **kwargs)  # the rerun
    record = json.loads((killed / "round-2/model/seed-0/dppo_training.json").read_text())
    assert record["resumed_from"] == str(run_dir / "checkpoint-3")  # its own checkpoint, not round 1's state
    round_job(experiment.training_dict(), 3, str(killed / "round-2/model"), str(killed / "round-2/state"), str(pref),
              str(later_ygen), str(later_ref), out_dir=str(killed / "model"), metrics_file=str(killed / "metrics.jsonl"),
              out_state=None, earlier_metrics=[str(killed / f"round-{j}/metrics.jsonl") for j in (1, 2)],
              checkpoint_dir=str(killed / "ckpt/round-3"), subset_seed=0, trust_remote_code=False)
    for seed in SEEDS:
        weights = f"seed-{seed}/model.safetensors"
        assert (killed / "model" / weights).read_bytes() == (uninterrupted / "model" / weights).read_bytes()
    assert (killed / "metrics.jsonl").read_bytes() == (uninterrupted / "metrics.jsonl").read_bytes()
    # and the moved y_gen mattered: these rounds differ from the rounds on an unchanged y_gen
    same = _run_rounds(_experiment(3), tiny_model_dir, pref, lambda k: ygen,
                       lambda k: ref if k == 1 else _per_seed_copies(ref, tmp_path / f"same-ref-{k}"), tmp_path / "same")
    assert (same / "model/seed-0/model.safetensors").read_bytes() != (killed / "model/seed-0/model.safetensors"
                                                                       ).read_bytes()


def _greedy(model_dir: Path, prompt: list[int], max_new_tokens: int) -> list[int]:
    """One prompt, unbatched, through transformers' own generate: an independent route."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             eos_token_id=model.generation_config.eos_token_id, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.slow
def test_round_k_y_gen_is_the_greedy_answer_of_round_k_minus_1(tiny_model_dir, pref_files, tmp_path):
    pref, ygen, stats = pref_files
    ref = tmp_path / "ref.parquet"
    cache_reference_logps(tiny_model_dir, pref, ygen, ref, batch_size=4)
    experiment = _experiment(3)
    round_job(experiment.training_dict(), 1, str(tiny_model_dir), None, str(pref), str(ygen), str(ref),
              out_dir=str(tmp_path / "round-1/model"), metrics_file=str(tmp_path / "round-1/metrics.jsonl"),
              out_state=str(tmp_path / "round-1/state"), earlier_metrics=[],
              checkpoint_dir=str(tmp_path / "ckpt"), subset_seed=0, trust_remote_code=False)
    settings = GenerationSettings(engine="transformers", batch_size=5)
    records = pregenerate_round(tmp_path / "round-1/model", pref, stats, ygen, tmp_path / "round-2/ygen",
                                tmp_path / "round-2/drift.json", settings, "onp", 2, list(SEEDS))
    prompts = [list(map(int, p)) for p in pd.read_parquet(pref)["prompt_ids"]]
    old = [list(map(int, g)) for g in pd.read_parquet(ygen)["gen_ids"]]
    answers = {}
    for seed, record in zip(SEEDS, records):
        model_dir = tmp_path / "round-1/model" / f"seed-{seed}"
        new = [list(map(int, g)) for g in pd.read_parquet(tmp_path / f"round-2/ygen/seed-{seed}.parquet")["gen_ids"]]
        budgets = [20 - len(p) for p in prompts]
        assert new == [_greedy(model_dir, p, b)[:b] for p, b in zip(prompts, budgets)]
        answers[seed] = new
        assert record["changed_share"] == pytest.approx(np.mean([a != b for a, b in zip(old, new)]))
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            sums = torch.stack([response_logps(model, [p], [[a, b]], pad_token_id=0).sums[0]
                                for p, a, b in zip(prompts, old, new)])
        assert record["logp_old_mean"] == pytest.approx(float(sums[:, 0].mean()), abs=1e-4)
        assert record["logp_new_mean"] == pytest.approx(float(sums[:, 1].mean()), abs=1e-4)
    assert json.loads((tmp_path / "round-2/drift.json").read_text()) == records
    table = drift_table([tmp_path / "round-2/drift.json"])
    assert table[["round", "seed"]].values.tolist() == [[2, 0], [2, 1]]

    # the round's reference log-probs: y_w's and y_l's from the shared cache, y_gen's of the SFT
    # model (here the tiny model) on the answers that changed, the cached value where none did
    # (seed 1: every odd row keeps the SFT model's answer)
    mixed = pd.read_parquet(ygen)
    mixed["gen_ids"] = [a if i % 2 else b for i, (a, b) in enumerate(zip(old, answers[1]))]
    (tmp_path / "mixed").mkdir()
    shutil.copyfile(tmp_path / "round-2/ygen/seed-0.parquet", tmp_path / "mixed/seed-0.parquet")
    mixed.to_parquet(tmp_path / "mixed/seed-1.parquet")
    cache_round_reference_logps(tiny_model_dir, pref, ygen, ref, tmp_path / "mixed", tmp_path / "round-2/ref",
                                list(SEEDS), batch_size=4)
    base = pd.read_parquet(ref)
    for seed in SEEDS:
        got = pd.read_parquet(tmp_path / f"round-2/ref/seed-{seed}.parquet")
        assert got[["prompt_id", "ref_chosen", "ref_rejected"]].equals(base[["prompt_id", "ref_chosen", "ref_rejected"]])
        fresh = cache_reference_logps(tiny_model_dir, pref, tmp_path / f"mixed/seed-{seed}.parquet",
                                      tmp_path / f"fresh-{seed}.parquet", batch_size=4)
        np.testing.assert_allclose(got["ref_gen"], fresh["ref_gen"], atol=1e-5)
        gen = [list(map(int, g)) for g in pd.read_parquet(tmp_path / f"mixed/seed-{seed}.parquet")["gen_ids"]]
        unchanged = np.array([a == b for a, b in zip(old, gen)])
        assert (~unchanged).any() and (seed == 0 or unchanged[1::2].all())
        assert (got["ref_gen"][unchanged] == base["ref_gen"][unchanged]).all()
        assert not np.allclose(got["ref_gen"][~unchanged], base["ref_gen"][~unchanged])  # really scored anew


# ----------------------------------------------------------------------------- slow: the workflow (configs/tiny.yaml)

ONP = "unll_onpolicy"  # configs/tiny.yaml: unll in 3 rounds, seeds 0 and 1 (4 steps: rounds of 1, 1 and 2)


def _changed(tiny_run: Path, **values) -> Path:
    config = yaml.safe_load((tiny_run / "tiny.yaml").read_text())
    config["experiments"][ONP].update(values)
    path = tiny_run / f"changed-{'-'.join(values)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _training_jobs(tiny_run: Path, config: Path) -> list[tuple[str, str]]:
    jobs = planned_jobs(snakemake(tiny_run, "all", "-n", "--configfile", str(config)).stdout)
    stages = {"pregenerate", "ref_logps", "train_preference", "pregenerate_round", "ref_logps_round", "train_round",
              "train_last_round"}
    return sorted((rule, out) for rule, out in jobs if rule in stages)


@pytest.mark.slow
def test_a_setting_only_later_rounds_read_reruns_rounds_2_and_3_only(tiny_run):
    assert _training_jobs(tiny_run, tiny_run / "tiny.yaml") == []
    later = _training_jobs(tiny_run, _changed(tiny_run, refresh_max_new_tokens=5))
    assert later == sorted([
        ("pregenerate_round", f"results/rounds/{ONP}/round-2/ygen"),
        ("pregenerate_round", f"results/rounds/{ONP}/round-3/ygen"),
        ("ref_logps_round", f"results/rounds/{ONP}/round-2/ref"),
        ("ref_logps_round", f"results/rounds/{ONP}/round-3/ref"),
        ("train_round", f"results/rounds/{ONP}/round-2/model"),
        ("train_last_round", f"results/models/{ONP}"),
    ])
    # what round 1 reads reruns every round (and nothing of the other experiments)
    every = _training_jobs(tiny_run, _changed(tiny_run, lr=0.002))
    assert ("train_round", f"results/rounds/{ONP}/round-1/model") in every
    assert len(every) == 7 and {rule for rule, _ in every} == {"pregenerate_round", "ref_logps_round", "train_round",
                                                                "train_last_round"}


@pytest.mark.slow
def test_the_tiny_on_policy_run_logs_its_rounds_and_regenerates_y_gen_by_each_round(tiny_run):
    metrics = [json.loads(line) for line in (tiny_run / f"results/metrics/{ONP}.jsonl").read_text().splitlines()]
    assert [(m["seed"], m["step"], m["round"]) for m in metrics] == [
        (s, step, r) for s in SEEDS for step, r in ((1, 1), (2, 2), (3, 3), (4, 3))]
    twin = [json.loads(line) for line in (tiny_run / "results/metrics/unll.jsonl").read_text().splitlines()]
    assert [(m["seed"], m["step"], m["lr"]) for m in metrics] == [(m["seed"], m["step"], m["lr"]) for m in twin]
    drift = pd.read_csv(tiny_run / "results/tables/ygen_drift.csv")
    assert drift[["round", "seed"]].values.tolist() == [[2, 0], [2, 1], [3, 0], [3, 1]]
    assert drift["changed_share"].between(0, 1).all() and np.isfinite(drift[["logp_old_mean", "logp_new_mean"]]).all(
        axis=None)
    cutoff = json.loads((tiny_run / "results/data/pref/stats.json").read_text())["cutoff"]
    prompts = [list(map(int, p)) for p in pd.read_parquet(tiny_run / "results/data/pref/train.parquet")["prompt_ids"]]
    for k in (2, 3):
        for seed in SEEDS:
            model_dir = tiny_run / f"results/rounds/{ONP}/round-{k - 1}/model/seed-{seed}"
            ygen = pd.read_parquet(tiny_run / f"results/rounds/{ONP}/round-{k}/ygen/seed-{seed}.parquet")
            got = [list(map(int, g)) for g in ygen["gen_ids"]]
            assert got == [_greedy(model_dir, p, max(1, cutoff - len(p))) for p in prompts], (k, seed)


@pytest.mark.slow
def test_a_kill_in_round_2_resumes_bit_identical(tiny_run, tmp_path):
    """Round 2 SIGKILLed after its step (before its state is saved, as a preemption would): the
    same target again resumes from round 1's state and ends bit-identical."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)  # keeps mtimes and .snakemake, so nothing upstream reruns
    target = f"results/models/{ONP}"
    shutil.rmtree(run / target)  # as in a first run killed in round 2: round 3 never ran
    (run / f"results/metrics/{ONP}.jsonl").unlink()
    kill = {"DPPO_FAULT_RUN": ONP, "DPPO_FAULT_AT_STEP": "2", "DPPO_FAULT_SIGNAL": "SIGKILL"}
    done = snakemake(run, target, "--cores", "1", "--forcerun", f"results/rounds/{ONP}/round-2/model",
                     "--configfile", str(run / "tiny.yaml"), check=False, env=kill)
    assert done.returncode != 0
    assert not (run / f"results/rounds/{ONP}/round-2/model").exists()  # no half-trained round taken as done
    assert "unll_onpolicy-2.log" in done.stderr + done.stdout  # the failed job is round 2's
    [partial] = (run / f"results/checkpoints/rounds/{ONP}/round-2/seed-0").glob("run-*")
    assert [json.loads(line)["step"] for line in (partial / "metrics.jsonl").read_text().splitlines()] == [2]

    snakemake(run, target, "--cores", "1", "--configfile", str(run / "tiny.yaml"))
    for seed in SEEDS:
        weights = f"{target}/seed-{seed}/model.safetensors"
        assert (run / weights).read_bytes() == (tiny_run / weights).read_bytes()
        record = json.loads((run / f"results/rounds/{ONP}/round-2/model/seed-{seed}/dppo_training.json").read_text())
        assert record["resumed_from"] == f"results/rounds/{ONP}/round-1/state/seed-{seed}"
    assert (run / f"results/metrics/{ONP}.jsonl").read_bytes() == (tiny_run / f"results/metrics/{ONP}.jsonl").read_bytes()
