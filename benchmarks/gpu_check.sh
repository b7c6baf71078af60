#!/usr/bin/env bash
# GPU check (one H100/H200, at most 8 minutes, nothing downloaded): prints ONE table of
#   SFT and DPO training tokens/s and MFU (dppo.train.loop.train with dppo.train.sft.SFTTask /
#   dppo.train.preference.PreferenceTask, bf16), greedy generation tokens/s (dppo.infer.generation.generate_greedy,
#   transformers vs vLLM) and reward scoring rows/s (dppo.infer.rewards, seqcls and nemotron, transformers
#   vs vLLM), on a randomly initialised Qwen2.5-0.5B-shaped model (built from its config).
# FLOP formula, peak FLOP/s and every row: see the docstring of benchmarks/gpu_check.py.
#
# Usage: bash benchmarks/gpu_check.sh [--dry-run] [--keep] [--json FILE] [--skip-vllm] [...]
#        (--help lists every option; --dry-run: a tiny model on the CPU, every code path, < 1 min)
# Needs (GPU run):
#   - a Python with a CUDA build of torch, transformers, pandas, pyarrow: $DPPO_PYTHON, else
#     .venv/bin/python, else python3. On a GPU machine: `python3 -m venv .venv &&
#     .venv/bin/pip install torch -e .` (the CPU-only .venv of `make install` will not do).
#     dppo is taken from this checkout's src/ (PYTHONPATH), installed or not.
#   - for the vLLM rows, the vLLM environment: $DPPO_VLLM_PYTHON, else .venv-vllm/bin/python;
#     on a GPU machine `python3 -m venv .venv-vllm && .venv-vllm/bin/pip install vllm pandas pyarrow
#     && .venv-vllm/bin/pip install --no-deps -e .` (`bash .ci/vllm_env.sh` builds the CPU one).
#     Without it those rows say so and the others still run.
# Env: DPPO_GPU_CHECK_TIMEOUT_S (480): the hard limit on the whole run (the script budgets 450 s).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${DPPO_PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then py="$repo/.venv/bin/python"; else py=python3; fi
fi
dry=0
for arg in "$@"; do
    case "$arg" in --dry-run) dry=1 ;; -h|--help) dry=1 ;; esac
done
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "$dry" = 0 ]; then
    # Fail fast, before any model is built, where there is no GPU.
    if ! cuda="$("$py" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>&1)"; then
        echo "gpu_check: $py cannot import torch: $cuda" >&2
        exit 2
    fi
    case "$cuda" in
        *True) ;;
        *)
            echo "gpu_check: no CUDA GPU: torch ${cuda% *} in $py sees none$(command -v nvidia-smi >/dev/null || echo ', and nvidia-smi is missing')." >&2
            echo "gpu_check: this check needs one H100/H200 and a CUDA build of torch (set DPPO_PYTHON);" \
                 "'bash benchmarks/gpu_check.sh --dry-run' runs its code paths on the CPU." >&2
            exit 2 ;;
    esac
fi
exec timeout --kill-after=10 "${DPPO_GPU_CHECK_TIMEOUT_S:-480}" "$py" "$repo/benchmarks/gpu_check.py" "$@"
