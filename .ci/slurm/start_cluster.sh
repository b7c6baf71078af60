#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (Debian/Ubuntu, root or sudo,
# no systemd needed) for the CI smoke test of `snakemake --profile slurm`.
#
# Idempotent: installs what is missing, (re)writes the config, starts only the
# daemons that are not running, and waits until the node is idle.
#
# Environment:
#   DPPO_SLURM_ACCOUNTING  slurmdbd (default): slurmdbd + MariaDB, so `sacct` works
#                          exactly as on a real cluster (the profile's default
#                          status command); none: no accounting, CI must then use
#                          `--slurm-status-command squeue` (see docs/cluster.md).
#   DPPO_SLURM_FAKE_GPUS   number of fake GPUs on the node (default 2).
#   DPPO_SLURM_WAIT_S      seconds to wait for the node to become idle (default 60).
#
# Facts behind the choices are in docs/cluster.md ("CI smoke test").
set -euo pipefail

ACCOUNTING="${DPPO_SLURM_ACCOUNTING:-slurmdbd}"
FAKE_GPUS="${DPPO_SLURM_FAKE_GPUS:-2}"
WAIT_S="${DPPO_SLURM_WAIT_S:-60}"
CLUSTER_NAME=dppo-ci
NODE=localhost
# The executor plugin re-runs snakemake inside each job under srun, which drops
# SLURM_CONF: the config has to live at the compiled-in default path.
CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/slurm/slurmctld
SPOOL_DIR=/var/lib/slurm/slurmd
LOG_DIR=/var/log/slurm
GPU_DIR=/var/lib/slurm/fake-gpus
RUN_DIR=/run/slurm

case "$ACCOUNTING" in slurmdbd|none) ;; *)
  echo "DPPO_SLURM_ACCOUNTING must be 'slurmdbd' or 'none', got '$ACCOUNTING'" >&2; exit 2;;
esac

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi

log() { echo "[start_cluster $(date +%T)] $*"; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# A daemon counts as running when its pid file names a live process.
running() { [ -f "$1" ] && $SUDO kill -0 "$(cat "$1")" 2>/dev/null; }

# ---------------------------------------------------------------- install
packages=(slurmctld slurmd slurm-client munge)
if [ "$ACCOUNTING" = slurmdbd ]; then packages+=(slurmdbd mariadb-server); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d in containers blocks service start-up; we start daemons by hand.
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/dppo-slurm-apt.log 2>&1 || {
    $SUDO apt-get update >/dev/null 2>&1
    $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/dppo-slurm-apt.log 2>&1
  } || { tail -20 /tmp/dppo-slurm-apt.log >&2; exit 1; }
  log "installed in $(elapsed) s"
fi

# ---------------------------------------------------------------- config
ncpus=$(nproc)
mem_total_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
# Leave head-room: slurmd drains a node that reports less memory than configured.
real_mem_mb=$(( mem_total_mb * 8 / 10 ))
if [ "$real_mem_mb" -gt 16000 ]; then real_mem_mb=16000; fi

$SUDO mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR" "$GPU_DIR" "$RUN_DIR"
gpu_files=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  for i in $(seq 0 $((FAKE_GPUS - 1))); do
    # gres.conf needs a device file per GPU; plain files are refused, /dev/null works.
    $SUDO ln -sfn /dev/null "$GPU_DIR/nvidia$i"
  done
  gpu_files="$GPU_DIR/nvidia[0-$((FAKE_GPUS - 1))]"
fi

if [ "$ACCOUNTING" = slurmdbd ]; then
  accounting_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
# sacct then shows the plugin's --comment (rule and wildcards) per job.
AccountingStoreFlags=job_comment"
else
  accounting_lines="AccountingStorageType=accounting_storage/none"
fi
gres_node=""; gres_types=""
if [ "$FAKE_GPUS" -gt 0 ]; then gres_node=" Gres=gpu:fake:$FAKE_GPUS"; gres_types="GresTypes=gpu"; fi

new_conf=$(cat <<CONF
# Written by .ci/slurm/start_cluster.sh: single-node test cluster, not for production.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a per-CPU default every job would take the whole node's memory.
DefMemPerCPU=500
# squeue keeps finished jobs this long; the plugin trusts squeue only when
# MinJobAge >= 3 x its first status delay (40 s by default).
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
$gres_types
$accounting_lines
# Every finished job is also appended here: the smoke test counts them.
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$ncpus RealMemory=$real_mem_mb$gres_node State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)
new_gres="# Written by .ci/slurm/start_cluster.sh
AutoDetect=off"
if [ "$FAKE_GPUS" -gt 0 ]; then
  new_gres+="
NodeName=$NODE Name=gpu Type=fake File=$gpu_files"
fi

conf_changed=0
if [ "$(cat "$CONF_DIR/slurm.conf" 2>/dev/null)" != "$new_conf" ]; then conf_changed=1; fi
if [ "$(cat "$CONF_DIR/gres.conf" 2>/dev/null)" != "$new_gres" ]; then conf_changed=1; fi
printf '%s\n' "$new_conf" | $SUDO tee "$CONF_DIR/slurm.conf" >/dev/null
printf '%s\n' "$new_gres" | $SUDO tee "$CONF_DIR/gres.conf" >/dev/null

# ---------------------------------------------------------------- munge
if ! running /run/munge/munged.pid; then
  $SUDO mkdir -p /run/munge /var/log/munge /var/lib/munge
  $SUDO chown munge:munge /run/munge /var/log/munge /var/lib/munge
  if [ ! -s /etc/munge/munge.key ]; then
    $SUDO mkdir -p /etc/munge
    $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
    $SUDO chown munge:munge /etc/munge/munge.key
    $SUDO chmod 400 /etc/munge/munge.key
  fi
  log "starting munged"
  $SUDO runuser -u munge -- /usr/sbin/munged
fi

# ---------------------------------------------------------------- slurmdbd
if [ "$ACCOUNTING" = slurmdbd ]; then
  if ! $SUDO mysqladmin ping >/dev/null 2>&1; then
    $SUDO mkdir -p /run/mysqld
    $SUDO chown mysql:mysql /run/mysqld /var/log/mysql 2>/dev/null || $SUDO chown mysql:mysql /run/mysqld
    log "starting mariadb"
    # Started detached by hand: no systemd, and policy-rc.d blocks init scripts.
    $SUDO setsid /usr/sbin/mariadbd --user=mysql --skip-networking=0 --bind-address=127.0.0.1 \
      >/var/log/slurm/mariadb.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do $SUDO mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
    $SUDO mysqladmin ping >/dev/null 2>&1 || { echo "mariadb did not start" >&2; tail -20 /var/log/slurm/mariadb.log >&2; exit 1; }
  fi
  $SUDO mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'dppo-ci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  dbd_conf="# Written by .ci/slurm/start_cluster.sh
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=dppo-ci
StorageLoc=slurm_acct_db"
  printf '%s\n' "$dbd_conf" | $SUDO tee "$CONF_DIR/slurmdbd.conf" >/dev/null
  # slurmdbd refuses a config readable by others (it holds the DB password).
  $SUDO chmod 600 "$CONF_DIR/slurmdbd.conf"
  if ! running "$RUN_DIR/slurmdbd.pid"; then
    log "starting slurmdbd"
    $SUDO /usr/sbin/slurmdbd
    for _ in $(seq 1 60); do $SUDO sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 0.5; done
  fi
  if ! $SUDO sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
    $SUDO sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
  fi
fi

# ---------------------------------------------------------------- slurmctld / slurmd
if [ "$conf_changed" = 1 ]; then
  # A new config (other accounting, GPU count) needs fresh daemons.
  for pidfile in "$RUN_DIR/slurmd.pid" "$RUN_DIR/slurmctld.pid"; do
    if running "$pidfile"; then
      pid=$(cat "$pidfile"); $SUDO kill "$pid"
      for _ in $(seq 1 40); do $SUDO kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
  done
fi
if ! running "$RUN_DIR/slurmctld.pid"; then
  log "starting slurmctld"
  # -i: ignore state files that do not match the (possibly new) config.
  $SUDO /usr/sbin/slurmctld -i
fi
if ! running "$RUN_DIR/slurmd.pid"; then
  log "starting slurmd"
  # -N: the machine's hostname is not 'localhost', the node name in slurm.conf.
  $SUDO /usr/sbin/slurmd -N "$NODE"
fi

# ---------------------------------------------------------------- wait for the node
deadline=$(( $(date +%s) + WAIT_S ))
state=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -1 || true)
  case "$state" in
    idle|mixed|allocated) log "node $NODE is $state after $(elapsed) s"; exit 0;;
    drain*|down*)
      # A node drained by an earlier config stays drained across restarts.
      $SUDO scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true;;
  esac
  sleep 0.5
done
echo "node $NODE did not become idle within $WAIT_S s (state: '${state:-unknown}')" >&2
sinfo -R >&2 || true
tail -20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
exit 1
