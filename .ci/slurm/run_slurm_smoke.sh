#!/usr/bin/env bash
# Run a workflow through the SLURM executor on the local single-node cluster and
# check that SLURM itself saw every job.
#
#   .ci/slurm/run_slurm_smoke.sh WORKFLOW_DIR CONFIGFILE TARGET [extra snakemake args]
#
# WORKFLOW_DIR  directory holding the Snakefile (the repository root for the
#               real pipeline, .ci/slurm/smoke for the self-test)
# CONFIGFILE    passed as --configfile; 'none' or '' for none
# TARGET        rule or file to build
#
# Exit status 0 only when: snakemake succeeded; every job that snakemake ran
# outside the local rules was submitted with sbatch; and SLURM's records
# (sacct with slurmdbd, else slurmctld's job-completion log) list exactly those
# job ids under this run's id, all COMPLETED.
# Environment: DPPO_SLURM_ACCOUNTING (see start_cluster.sh), SNAKEMAKE (binary),
# DPPO_SLURM_SMOKE_TIMEOUT_S (default 600).
set -euo pipefail

if [ $# -lt 3 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
workflow_dir=$(cd "$1" && pwd); configfile=$2; target=$3; shift 3

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
accounting="${DPPO_SLURM_ACCOUNTING:-slurmdbd}"
timeout_s="${DPPO_SLURM_SMOKE_TIMEOUT_S:-600}"
snakemake_bin="${SNAKEMAKE:-}"
if [ -z "$snakemake_bin" ]; then
  if [ -x "$repo/.venv/bin/snakemake" ]; then snakemake_bin="$repo/.venv/bin/snakemake"; else snakemake_bin=snakemake; fi
fi

log() { echo "[slurm-smoke $(date +%T)] $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }

# Stop the cluster at the end only when this script started it.
started_here=0
if ! { [ -f /run/slurm/slurmctld.pid ] && kill -0 "$(cat /run/slurm/slurmctld.pid)" 2>/dev/null; }; then
  started_here=1
fi
cleanup() { if [ "$started_here" = 1 ] && [ -z "${DPPO_SLURM_KEEP_CLUSTER:-}" ]; then "$here/stop_cluster.sh" || true; fi; }
trap cleanup EXIT

t_setup=$(now)
DPPO_SLURM_ACCOUNTING="$accounting" "$here/start_cluster.sh"
setup_s=$(secs "$t_setup" "$(now)")
log "cluster ready in $setup_s s (accounting: $accounting)"

args=(--profile "$repo/slurm" --profile "$here/profile")
# Without slurmdbd sacct cannot answer; the plugin would retry it forever.
if [ "$accounting" = none ]; then args+=(--slurm-status-command squeue); fi
# '=' form: --configfile takes several values and would swallow TARGET.
case "$configfile" in ''|none) ;; *) args+=("--configfile=$(cd "$(dirname "$configfile")" && pwd)/$(basename "$configfile")");; esac

run_log=$(mktemp /tmp/dppo-slurm-smoke.XXXXXX.log)
sacct_start=$(date +%Y-%m-%dT%H:%M:%S)
log "running: snakemake ${args[*]} $target $* (in $workflow_dir, log $run_log)"
t_run=$(now)
set +e
( cd "$workflow_dir" && timeout -k 10 "$timeout_s" "$snakemake_bin" "${args[@]}" "$target" "$@" ) 2>&1 | tee "$run_log"
rc=${PIPESTATUS[0]}
set -e
run_s=$(secs "$t_run" "$(now)")
log "snakemake exited with $rc after $run_s s"
if [ "$rc" -ne 0 ]; then
  [ "$rc" -eq 124 ] && log "FAIL: snakemake ran past ${timeout_s} s" >&2
  exit 1
fi

# ---------------------------------------------------------------- what snakemake did
run_id=$(sed -n 's/^SLURM run ID: \(.*\)$/\1/p' "$run_log" | tail -1)
# Each job that snakemake hands to the executor is announced as "rule NAME:";
# local rules (like `all`) as "localrule NAME:".
n_remote=$(grep -cE '^rule [A-Za-z0-9_]+:$' "$run_log" || true)
submitted_ids=$(sed -n 's/.*has been submitted with SLURM jobid \([0-9][0-9]*\).*/\1/p' "$run_log" | sort -n)
n_submitted=$(printf '%s\n' "$submitted_ids" | grep -c . || true)
log "run id ${run_id:-?}: snakemake ran $n_remote non-local jobs, submitted $n_submitted with sbatch"

if grep -q "^Nothing to be done" "$run_log"; then
  # A smoke test that submitted nothing proves nothing.
  log "FAIL: nothing to be done: remove the outputs or pass --forceall" >&2; exit 1
fi
fail=0
if [ -z "$run_id" ]; then log "FAIL: no 'SLURM run ID' in the log: was the slurm executor used?" >&2; fail=1; fi
if [ "$n_remote" -ne "$n_submitted" ]; then log "FAIL: $n_remote jobs ran but $n_submitted were submitted" >&2; fail=1; fi
if [ "$n_submitted" -eq 0 ]; then log "FAIL: no job was submitted" >&2; fail=1; fi

# ---------------------------------------------------------------- what SLURM saw
if [ "$accounting" = slurmdbd ]; then
  source_name=sacct
  # The plugin names every job of a run after the run id.
  slurm_rows=$(sacct -X -n -P -S "$sacct_start" --name "$run_id" -o JobID,State,Comment)
else
  source_name="jobcomp log"
  # slurmctld appends each finished job to its job-completion log.
  slurm_rows=$(awk -v name="Name=$run_id" '$0 ~ name {
      for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      print f["JobId"] "|" f["JobState"] "|" }' /var/log/slurm/jobcomp.log)
fi
echo "$source_name rows (JobID|State|Comment):"
printf '%s\n' "$slurm_rows" | sed 's/^/  /'
seen_ids=$(printf '%s\n' "$slurm_rows" | grep . | cut -d'|' -f1 | sort -n || true)
n_seen=$(printf '%s\n' "$seen_ids" | grep -c . || true)
n_completed=$(printf '%s\n' "$slurm_rows" | grep -c '^[0-9]*|COMPLETED|' || true)
if [ "$seen_ids" != "$submitted_ids" ]; then
  log "FAIL: $source_name lists job ids [$(echo $seen_ids)], snakemake submitted [$(echo $submitted_ids)]" >&2; fail=1
fi
if [ "$n_completed" -ne "$n_seen" ]; then log "FAIL: only $n_completed of $n_seen jobs COMPLETED" >&2; fail=1; fi

log "summary: cluster set-up ${setup_s} s, workflow ${run_s} s, jobs: snakemake $n_remote, sbatch $n_submitted, $source_name $n_seen ($n_completed COMPLETED)"
if [ "$fail" -ne 0 ]; then log "FAILED"; exit 1; fi
log "OK"
