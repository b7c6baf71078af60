#!/usr/bin/env bash
# Stop the daemons started by start_cluster.sh, each by the PID in its pid file
# (no systemd, and never by process name: other slurm daemons may be legitimate).
# Leaves packages, config and state in place, so a restart is quick.
set -uo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

stop_pidfile() {
  local name=$1 pidfile=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if [ -n "$pid" ] && $SUDO kill -0 "$pid" 2>/dev/null; then
    echo "[stop_cluster] stopping $name (pid $pid)"
    $SUDO kill "$pid"
    for _ in $(seq 1 40); do $SUDO kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
    echo "[stop_cluster] $name did not exit after 10 s, sending SIGKILL" >&2
    $SUDO kill -9 "$pid" 2>/dev/null || true
  fi
}

# Compute daemon first, controller next, then accounting and authentication.
stop_pidfile slurmd /run/slurm/slurmd.pid
stop_pidfile slurmctld /run/slurm/slurmctld.pid
stop_pidfile slurmdbd /run/slurm/slurmdbd.pid
stop_pidfile mariadb /run/mysqld/mysqld.pid
stop_pidfile munged /run/munge/munged.pid
exit 0
