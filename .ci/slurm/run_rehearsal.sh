#!/usr/bin/env bash
# The CPU rehearsal of configs/paper.yaml (configs/overlays/rehearsal.yaml) through the real
# single-node SLURM cluster: every job submitted with sbatch, `all` to the tables and figures.
#
#   .ci/slurm/run_rehearsal.sh [WORKDIR [extra snakemake args]]   (default: runs/rehearsal; `make rehearsal`)
#   e.g. ... /tmp/r --set-resources train_preference:gpu=2   (preference training under torchrun)
#
# Writes the local inputs into WORKDIR (python -m dppo.data.rehearsal: hub-schema datasets, a
# tiny Qwen2 policy, a tiny Nemotron-protocol reward model; WORKDIR/.venv-vllm links to the vLLM
# environment), runs `snakemake --profile slurm all` there with run_slurm_smoke.sh (which checks
# that SLURM saw every job COMPLETED), then checks that every table and figure of `all` exists.
# Status checks from 5 s on (the plugin adds 10 s after each check that finds no job finished):
# the rehearsal's jobs run one after the other for about a minute each, so rounds stay short.
# WORKDIR is emptied first: a rehearsal that finds its outputs proves nothing.
# Environment: DPPO_REHEARSAL_TIMEOUT_S (default 1200), DPPO_VLLM_ENV (default <repo>/.venv-vllm),
# and run_slurm_smoke.sh's.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
workdir=${1:-$repo/runs/rehearsal}
shift $(( $# > 0 ? 1 : 0 ))
python="${PYTHON:-$repo/.venv/bin/python}"
vllm_env="${DPPO_VLLM_ENV:-$repo/.venv-vllm}"

log() { echo "[rehearsal $(date +%T)] $*"; }
start=$SECONDS

# The jobs (sbatch exports the submitting shell's environment) import this checkout's dppo.
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"

rm -rf "$workdir"
mkdir -p "$workdir"
workdir=$(cd "$workdir" && pwd)
"$python" -m dppo.data.rehearsal "$workdir" --vllm-env "$vllm_env"

# One engine process per vLLM start instead of three (engine core and workers spawned): about
# 15 s instead of 30-45 s per start on 2 cores; the generation and scoring code is the same.
export VLLM_ENABLE_V1_MULTIPROCESSING="${VLLM_ENABLE_V1_MULTIPROCESSING:-0}"

DPPO_SLURM_SMOKE_TIMEOUT_S="${DPPO_REHEARSAL_TIMEOUT_S:-1200}" "$here/run_slurm_smoke.sh" "$workdir" none all \
    --snakefile "$repo/Snakefile" \
    --slurm-init-seconds-before-status-checks 5 \
    "$@" --configfile "$repo/configs/paper.yaml" "$repo/configs/overlays/rehearsal.yaml"

# `all`'s tables and figures, as the Snakefile lists them (a dry run prints the DAG's outputs).
missing=0
for f in results/tables/win_rates.csv results/tables/claims.csv results/tables/penalty_scale.csv \
         results/tables/premise.json paper/tables/win_rates.tex paper/tables/claims.tex paper/tables/macros.tex \
         paper/tables/penalty_scale.tex results/tables/ygen_drift.csv; do
  [ -s "$workdir/$f" ] || { log "MISSING: $f" >&2; missing=1; }
done
for fig in hparam_search paradigms differences reward_hist data_efficiency dynamics length_dist toy_dynamics \
           toy_gradients toy_grid; do
  for ext in pdf png; do
    [ -s "$workdir/paper/figures/$fig.$ext" ] || { log "MISSING: paper/figures/$fig.$ext" >&2; missing=1; }
  done
done
if [ "$missing" -ne 0 ]; then log "FAILED: tables or figures missing"; exit 1; fi
log "OK: every table and figure of all in $workdir, $(( SECONDS - start )) s in all"
