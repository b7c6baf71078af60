"""The workflow itself: dry runs of every shipped config, the linter, one tiny end-to-end run
on CPU, and that changing one experiment reruns only what depends on it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from pipeline import ROOT, snakemake

from dppo.config import expand_experiments, load_settings, merged_config, vllm_problem

SHIPPED_CONFIGS = [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]
OVERLAYS = sorted((ROOT / "configs" / "overlays").glob("*.yaml"))  # given after config.yaml, but:
OVERLAY_BASES = {"rehearsal.yaml": ROOT / "configs" / "paper.yaml"}  # the CPU rehearsal of the paper's config


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, first output) of every job a dry run plans."""
    jobs = re.findall(r"^(?:local)?rule (\w+):\n(?:    input: .*\n)?    output: ([^,\n]+)", dry_run_output, flags=re.M)
    return [(rule, output) for rule, output in jobs if rule != "all"]


def _merged(paths) -> dict:
    return merged_config([yaml.safe_load(path.read_text()) for path in paths])  # as Snakemake merges them


@pytest.mark.parametrize("configs", [[c] for c in SHIPPED_CONFIGS] +
                         [[OVERLAY_BASES.get(o.name, ROOT / "config.yaml"), o] for o in OVERLAYS],
                         ids=lambda ps: "+".join(p.name for p in ps))
def test_dry_run_of_every_shipped_config(configs, tmp_path):
    args = ("all", "-n", "--configfile", *map(str, configs))
    if configs[-1].name == "rehearsal.yaml":  # its local inputs must exist before any job
        from dppo.data.rehearsal import write_inputs

        write_inputs(tmp_path)
    # A config that runs vLLM (configs/paper.yaml) stops before any job where its environment is
    # missing or cannot import vllm, with the message vllm_problem gives here; the plan is then
    # checked with the check skipped (as on a laptop before submitting to the cluster).
    expected = vllm_problem(load_settings(_merged(configs)), tmp_path)
    if expected is not None:
        refused = snakemake(tmp_path, *args, check=False)
        assert refused.returncode != 0 and expected in refused.stderr + refused.stdout, refused.stderr[-3000:]
        assert not (tmp_path / "results").exists()
    done = snakemake(tmp_path, *args, env={"DPPO_SKIP_VLLM_CHECK": "1"} if expected is not None else None)
    experiments = load_settings(_merged(configs)).experiments
    assert len(experiments) == len(expand_experiments(_merged(configs)))
    counts = {rule: int(n) for rule, n in re.findall(r"^(\w+)\s+(\d+)$", done.stdout, flags=re.M)}
    # one job per experiment, whatever its seeds; an on-policy one (rounds: R) one per round
    assert counts["train_preference"] == sum(e.rounds == 1 for e in experiments.values())
    rounds = [e.rounds for e in experiments.values() if e.rounds > 1]
    assert counts.get("train_last_round", 0) == len(rounds)
    assert counts.get("train_round", 0) == sum(r - 1 for r in rounds)
    assert counts.get("pregenerate_round", 0) == counts.get("ref_logps_round", 0) == sum(r - 1 for r in rounds)
    # one job answers for every model and one scores them all: one reward-model load per pass
    assert int(counts["generate_eval"]) == int(counts["score"]) == 1


def test_lint_is_clean(tmp_path):
    done = snakemake(tmp_path, "--lint", "--configfile", str(ROOT / "configs" / "tiny.yaml"), check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_config_stops_before_any_job_naming_the_key(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["experiments"]["dpo"]["zeta"] = 2
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert done.returncode != 0
    assert "config key experiments.dpo.zeta: 2 is greater than the maximum of 1" in done.stderr + done.stdout
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("overlay, section", [
    ({"reward": {"backend": "nemotron", "engine": "vllm", "model": "RM_DIR"}}, "reward"),
    ({"reward": {"backend": "nemotron", "engine": "vllm", "model": "RM_DIR", "vllm_python": "PYTHON"}}, "reward"),
    ({"generation": {"engine": "vllm", "vllm_python": "nowhere/bin/python"}}, "generation"),
    ({"generation": {"engine": "vllm", "vllm_python": "PYTHON"}}, "generation"),
], ids=["reward", "reward-no-vllm-module", "generation", "generation-no-vllm-module"])
def test_a_vllm_section_without_its_environment_stops_before_any_job(overlay, section, tmp_path):
    """Without the vLLM environment the pipeline would train every model and fail only at
    generation or scoring: the dry run already stops, naming the key and how to build it."""
    if "PYTHON" in json.dumps(overlay) and importlib.util.find_spec("vllm") is not None:
        pytest.skip("this interpreter imports vllm")
    (tmp_path / "rm").mkdir()  # a local reward model directory (check_local_paths wants it)
    text = json.dumps(overlay).replace("RM_DIR", str(tmp_path / "rm")).replace("PYTHON", sys.executable)
    (tmp_path / "overlay.yaml").write_text(text)
    done = snakemake(tmp_path, "all", "-n", "--configfile", str(ROOT / "configs" / "tiny.yaml"),
                     str(tmp_path / "overlay.yaml"), check=False)
    output = done.stderr + done.stdout
    assert done.returncode != 0
    python = overlay[section].get("vllm_python", ".venv-vllm/bin/python").replace("PYTHON", sys.executable)
    reason = ("cannot `import vllm, dppo.infer.vllm_engine`: ModuleNotFoundError: No module named 'vllm'"
              if python == sys.executable else "does not exist")
    assert f"invalid config: config key {section}.vllm_python: {python!r} {reason} ({section}.engine: vllm runs " \
           "vLLM with it); build the vLLM environment with `bash .ci/vllm_env.sh`" in output, output[-3000:]
    assert "Job stats" not in output and not (tmp_path / "results").exists()  # no job planned, none run


@pytest.mark.slow
def test_tiny_end_to_end_run_produces_every_result(tiny_run):
    config = yaml.safe_load((tiny_run / "tiny.yaml").read_text())
    stats = json.loads((tiny_run / "results/data/pref/stats.json").read_text())
    assert stats["cutoff"] > 0 and stats["rows_kept"]["train"] > 0
    table = pd.read_csv(tiny_run / "results/tables/win_rates.csv")
    assert set(table["name"]) == {"dpo", "unll", "conll__alpha=0.5", "unll_small", "unll_then_dpo", "ipo",
                                  "unll_onpolicy"}
    assert table["win_rate"].between(0, 1).all()
    assert (table["win_rate_low"] <= table["win_rate"]).all() and (table["win_rate"] <= table["win_rate_high"]).all()
    assert table.set_index("name")["n_seeds"].to_dict()["dpo"] == 2
    for name in table["name"]:
        metrics = [json.loads(line) for line in (tiny_run / f"results/metrics/{name}.jsonl").read_text().splitlines()]
        assert metrics and all(key in metrics[0] for key in ("loss", "dpo", "logp_chosen", "logp_rejected", "grad_norm",
                                                             "seed"))
    unll_metrics = (tiny_run / "results/metrics/unll.jsonl").read_text().splitlines()
    # y_gen's log-prob: logged on the fixed probe rows (every step here), not per batch (track_gen off)
    assert all(json.loads(line)["probe_logp_gen"] is not None for line in unll_metrics)
    assert all("grad_weight_penalty" in json.loads(line) for line in unll_metrics)
    assert sorted({json.loads(line)["seed"] for line in unll_metrics}) == [0, 1]
    for fig in ("hparam_search", "paradigms", "differences", "reward_hist", "data_efficiency", "dynamics", "length_dist"):
        assert (tiny_run / f"paper/figures/{fig}.pdf").stat().st_size > 0
    macros = (tiny_run / "paper/tables/macros.tex").read_text()
    assert "\\newcommand{\\claimNegativeVerdict}" in macros
    claims = pd.read_csv(tiny_run / "results/tables/claims.csv")
    assert set(claims["verdict"]) <= {"holds", "refuted", "inconclusive", "not tested"}
    assert (tiny_run / "paper/build.log").exists()
    scores = pd.read_parquet(tiny_run / "results/scores/unll.parquet")
    assert len(scores) == 2 * config["data"]["pref"]["max_eval_prompts"]  # two seeds answer every prompt
    if shutil.which("latexmk"):
        assert (tiny_run / "paper/main.pdf").read_bytes()[:5] == b"%PDF-"


@pytest.mark.slow
def test_chained_experiment_starts_from_the_named_experiment(tiny_run):
    from dppo.runtime.io import weights_digest

    for seed in (0, 1):  # seed by seed
        record = json.loads((tiny_run / f"results/models/unll_then_dpo/seed-{seed}/dppo_training.json").read_text())
        assert record["init"] == f"results/models/unll/seed-{seed}"
        assert record["init_sha256"] == weights_digest(tiny_run / f"results/models/unll/seed-{seed}")
    sft_record = json.loads((tiny_run / "results/models/dpo/seed-0/dppo_training.json").read_text())
    assert sft_record["init_sha256"] == weights_digest(tiny_run / "results/models/sft")


@pytest.mark.slow
def test_changing_one_alpha_reruns_only_that_experiment_and_its_dependents(tiny_run):
    nothing = snakemake(tiny_run, "all", "-n", "--configfile", str(tiny_run / "tiny.yaml"))
    assert planned_jobs(nothing.stdout) == [], nothing.stdout

    config = yaml.safe_load((tiny_run / "tiny.yaml").read_text())
    config["experiments"]["unll"]["alpha"] = 0.3  # unll; unll_then_dpo starts from it
    changed = tiny_run / "changed.yaml"
    changed.write_text(yaml.safe_dump(config, sort_keys=False))
    jobs = planned_jobs(snakemake(tiny_run, "all", "-n", "--configfile", str(changed)).stdout)
    trained = sorted(out for rule, out in jobs if rule == "train_preference")
    assert trained == ["results/models/unll", "results/models/unll_then_dpo"]
    # one answering and one scoring job, for the whole grid; their content caches make them
    # regenerate and rescore only the changed models (checked below by running them)
    assert sorted(rule for rule, _ in jobs if rule in ("generate_eval", "score")) == ["generate_eval", "score"]
    upstream = {"make_synthetic", "init_model", "prepare_data", "sft", "pregenerate", "ref_logps"}
    assert not upstream & {rule for rule, _ in jobs}


@pytest.mark.slow
def test_a_changed_experiment_regenerates_and_rescores_only_its_answers(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)  # keeps mtimes and .snakemake: nothing else is stale
    config = yaml.safe_load((run / "tiny.yaml").read_text())
    config["experiments"]["unll"]["alpha"] = 0.3
    (run / "changed.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = {name: pd.read_parquet(run / f"results/scores/{name}.parquet") for name in ("sft", "dpo", "ipo")}
    snakemake(run, "results/tables/win_rates.csv", "--cores", "2", "--configfile", str(run / "changed.yaml"))
    generated = (run / "logs/generate_eval/generate_eval.log").read_text()
    assert "generated answers of 2 of 8 models" in generated  # unll and unll_then_dpo
    scored = (run / "logs/score/score.log").read_text()
    assert "reward-model loads: 1 (programmatic, transformers) for 2 of 8 files" in scored
    for name, table in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / f"results/scores/{name}.parquet"), table)


TEX_ENGINES = {"latexmk", "pdflatex", "bibtex"}  # what dppo.report.pdf looks for


def _without_tex(tmp_path: Path) -> dict:
    """An environment whose PATH holds every program of today's PATH but the TeX engines."""
    bin_dir = tmp_path / "bin-without-tex"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        for program in Path(directory).glob("*") if Path(directory).is_dir() else ():
            link = bin_dir / program.name
            if program.name not in TEX_ENGINES and not link.exists() and os.access(program, os.X_OK):
                link.symlink_to(program)
    return {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{bin_dir}"}


def _smallest(config: dict, rows: int = 120) -> dict:
    """``config`` at its smallest: every experiment, seed, figure and table, on few rows and steps."""
    config = json.loads(json.dumps(config))
    config["synthetic"].update(n_sft_train=200, n_sft_test=20, n_pref_train=rows, n_pref_test=40)
    config["data"]["pref"]["max_eval_prompts"] = 20
    config["sft"].update(epochs=1)
    config["preference_defaults"].update(epochs=1, batch_size=16, probe_rows=8)
    for experiment in config["experiments"].values():
        if experiment.get("n_train") is not None:
            experiment["n_train"] = rows // 3
    config["win_rate"]["n_boot"] = 200
    config["toy"].update(seeds=[0], sft_steps=50, steps=20)
    return config


@pytest.mark.slow
@pytest.mark.long
def test_the_embedded_default_at_its_smallest_runs_through_the_paper_without_tex(tmp_path):
    """config.yaml's whole grid (every experiment and seed, every figure and table) on few rows,
    on a machine without TeX: the run succeeds and says how to get the PDF."""
    config = _smallest(yaml.safe_load((ROOT / "config.yaml").read_text()))
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, "all", "--cores", "2", "--configfile", str(tmp_path / "small.yaml"), env=_without_tex(tmp_path))
    table = pd.read_csv(tmp_path / "results/tables/win_rates.csv")
    assert set(table["name"]) == set(expand_experiments(config))
    claims = pd.read_csv(tmp_path / "results/tables/claims.csv")
    assert list(claims["claim"]) == ["alpha", "negative", "efficiency", "chained"]
    for fig in ("hparam_search", "paradigms", "differences", "dynamics", "toy_dynamics", "toy_grid"):
        assert (tmp_path / f"paper/figures/{fig}.pdf").stat().st_size > 0
    assert not (tmp_path / "paper/main.pdf").exists()
    assert "apt-get install" in (tmp_path / "paper/build.log").read_text()


SMOLLM2_DIR = ROOT / ".cache" / "smollm2" / "hf"


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.skipif(not (SMOLLM2_DIR / "model.safetensors").is_file(),
                    reason=f"SmolLM2-135M-Instruct not converted at {SMOLLM2_DIR}: run `bash .ci/smollm2.sh`")
def test_the_real_model_config_runs_through_the_paper(tmp_path):
    """configs/smollm2-cpu.yaml's ``all`` (already its smallest: a few steps per stage) on the real
    pretrained model; the model path made absolute for the test's own directory."""
    config = yaml.safe_load((ROOT / "configs" / "smollm2-cpu.yaml").read_text())
    config["model"]["init"] = str(SMOLLM2_DIR)
    (tmp_path / "smollm2.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(tmp_path, "all", "--cores", "2", "--configfile", str(tmp_path / "smollm2.yaml"), timeout=1800)
    table = pd.read_csv(tmp_path / "results/tables/win_rates.csv")
    assert set(table["name"]) == set(expand_experiments(config))
    assert (tmp_path / "paper/tables/macros.tex").stat().st_size > 0
    if shutil.which("latexmk"):
        assert (tmp_path / "paper/main.pdf").read_bytes()[:5] == b"%PDF-"
