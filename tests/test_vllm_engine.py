"""The route into the vLLM environment (dppo.infer.vllm_engine), without vLLM: a real
subprocess of another interpreter path (a wrapper around this one), running a real stage
function (the score job's vLLM side, with the programmatic reward that needs no model).
The vLLM engines themselves are compared in test_vllm_parity.py and test_vllm_scoring.py."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from dppo.infer import vllm_engine
from dppo.infer.rewards import ProgrammaticReward
from dppo.runtime.stage import stage
from dppo.settings import RewardSettings

PROMPTS = ["rsort : a b c", "sort : c a b", "unique : b a b"]
RESPONSES = ["c b a", "a b c d", ""]


@pytest.fixture
def other_python(tmp_path) -> Path:
    """This interpreter under another path: the route takes its subprocess branch."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    assert not vllm_engine.is_this_interpreter(python)
    return python


def test_a_function_runs_in_the_named_interpreter_and_returns_its_table(other_python):
    table = pd.DataFrame({"prompt": PROMPTS, "response": RESPONSES})
    settings = RewardSettings().to_dict()
    got = vllm_engine.call(other_python, "dppo.infer.scoring:score_in_vllm", table, settings=settings)
    here = vllm_engine.call(sys.executable, "dppo.infer.scoring:score_in_vllm", table, settings=settings)
    expected = ProgrammaticReward().score(PROMPTS, RESPONSES)
    assert got["reward"].tolist() == here["reward"].tolist() == expected  # exact: floats through parquet
    assert len(set(expected)) == 3  # distinct rewards: a reordering would show


def test_a_failure_there_names_the_function_and_its_exit_code(other_python):
    table = pd.DataFrame({"prompt": PROMPTS, "response": RESPONSES})
    with pytest.raises(RuntimeError, match=r"dppo.infer.scoring:score_in_vllm failed in the vLLM environment "
                                           r"\(exit code 1"):
        vllm_engine.call(other_python, "dppo.infer.scoring:score_in_vllm", table, settings={"backend": "gpt4"})


def test_the_childs_output_goes_to_the_rules_log(other_python, tmp_path):
    """Under dppo.runtime.stage (every workflow script) the child's traceback is in the rule's
    log, beside the error that points to it, not in the scheduler's output."""
    job = SimpleNamespace(log=[str(tmp_path / "score.log")], threads=1, rule="score")
    table = pd.DataFrame({"prompt": PROMPTS, "response": RESPONSES})
    with pytest.raises(RuntimeError, match="exit code 1"), stage(job):
        vllm_engine.call(other_python, "dppo.infer.scoring:score_in_vllm", table, settings={"backend": "gpt4"})
    log = (tmp_path / "score.log").read_text()
    assert "Traceback" in log and "config key reward.backend: 'gpt4' is not one of" in log
    assert log.index("config key reward.backend") < log.index("failed in the vLLM environment")


def test_a_missing_interpreter_says_how_to_build_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*bash .ci/vllm_env.sh"):
        vllm_engine.call(tmp_path / "none" / "python", "dppo.infer.scoring:score_in_vllm", pd.DataFrame())


def test_only_functions_of_the_package_are_run():
    with pytest.raises(ValueError, match="expected a 'dppo.module:function' name"):
        vllm_engine.call(sys.executable, "os:system", pd.DataFrame())
