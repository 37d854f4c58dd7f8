#!/usr/bin/env bash
# A real one-node Slurm on this machine, for tests/slurm (no mocks of sbatch/srun).
#
#   slurm/ci/local_slurm.sh up       install slurm-wlm + munge if missing, write slurm.conf,
#                                    start munged, slurmctld, slurmd; wait until the node is idle
#   slurm/ci/local_slurm.sh down     stop the daemons this script started
#   slurm/ci/local_slurm.sh status   print sinfo; exit 0 only if the node can take jobs
#
# Idempotent: `up` returns at once when the node already answers. Needs root (it installs
# packages and writes /etc/slurm/slurm.conf). Knobs: SLURM_UP_TIMEOUT_S (default 60).
# Daemons run as root with proctrack/linuxproc: containers rarely allow cgroup delegation.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/lib/exaone-slurm
LOG_DIR=/var/log/exaone-slurm
RUN_DIR=/run/exaone-slurm
TIMEOUT_S=${SLURM_UP_TIMEOUT_S:-60}
NODE=$(hostname -s)

die() { echo "local_slurm: $*" >&2; exit 1; }
log() { echo "local_slurm: $*" >&2; }

node_ready() {
  # 0 when sinfo reports our node in a state that accepts jobs.
  local state
  state=$(timeout 10 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -1) || return 1
  [[ "$state" =~ ^(idle|mixed|allocated|completing)$ ]]
}

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v sbatch >/dev/null && command -v munged >/dev/null; then
    return 0
  fi
  [[ $EUID -eq 0 ]] || die "slurm-wlm/munge are not installed and we are not root to install them"
  command -v apt-get >/dev/null || die "slurm-wlm/munge missing and apt-get is not available"
  log "installing slurm-wlm munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  # policy-rc.d 101: packages must not try to start services (no init system here).
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
    || { [[ $created_policy -eq 1 ]] && rm -f "$policy"; die "apt-get install slurm-wlm munge failed"; }
  [[ $created_policy -eq 1 ]] && rm -f "$policy"
  command -v slurmctld >/dev/null || die "slurmctld not found after install"
}

write_conf() {
  local mem_mb cpus
  mem_mb=$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')
  cpus=$(nproc --all)
  mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/d" "$LOG_DIR" "$RUN_DIR"
  cat >"$CONF_DIR/slurm.conf.new" <<CONF
# Written by slurm/ci/local_slurm.sh: one-node CI cluster. Do not use in production.
ClusterName=exaone-ci
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=10
InactiveLimit=0
SchedulerParameters=sched_interval=2
GresTypes=gpu
NodeName=$NODE CPUs=$cpus RealMemory=$mem_mb Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  # Stand-in GPU gres backed by /dev/null and /dev/zero (slurmd's gpu plugin wants device
  # files): the sbatch scripts' --gpus-per-node requests schedule as on a GPU cluster; the
  # jobs themselves run on CPU.
  printf 'AutoDetect=off\nNodeName=%s Name=gpu File=/dev/null\nNodeName=%s Name=gpu File=/dev/zero\n' \
    "$NODE" "$NODE" >"$CONF_DIR/gres.conf.new"
  local changed=0 f
  for f in slurm.conf gres.conf; do
    if ! cmp -s "$CONF_DIR/$f.new" "$CONF_DIR/$f" 2>/dev/null; then
      mv "$CONF_DIR/$f.new" "$CONF_DIR/$f"; changed=10
    else
      rm -f "$CONF_DIR/$f.new"
    fi
  done
  return "$changed"  # 10: changed, running daemons must restart
}

start_munge() {
  if pgrep -x munged >/dev/null && munge -n >/dev/null 2>&1; then return 0; fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating munge key"
    if command -v mungekey >/dev/null; then mungekey --create --force
    else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "munged started but munge -n fails"
}

stop_daemons() {
  local name pidfile pid
  for name in slurmd slurmctld; do
    pidfile=$RUN_DIR/$name.pid
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    fi
    rm -f "$pidfile"
  done
}

start_slurm() {
  [[ -s $RUN_DIR/slurmctld.pid ]] && kill -0 "$(cat "$RUN_DIR/slurmctld.pid")" 2>/dev/null \
    || slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
  [[ -s $RUN_DIR/slurmd.pid ]] && kill -0 "$(cat "$RUN_DIR/slurmd.pid")" 2>/dev/null \
    || slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
}

wait_ready() {
  local deadline=$((SECONDS + TIMEOUT_S))
  while ((SECONDS < deadline)); do
    if node_ready; then return 0; fi
    # A node left DOWN/DRAIN by an earlier run comes back with an explicit resume.
    if timeout 10 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | grep -Eq 'down|drain|inval'; then
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 1
  done
  sinfo >&2 || true
  tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
  die "node $NODE is not idle after ${TIMEOUT_S}s"
}

conf_current() {
  # The fast path must not keep a cluster running an older version of this script's config.
  grep -q "^GresTypes=gpu" "$CONF_DIR/slurm.conf" 2>/dev/null
}

cmd_up() {
  if command -v sinfo >/dev/null && node_ready && conf_current; then
    echo "local_slurm: up (node $NODE ready)"; return 0
  fi
  install_packages
  local changed=0
  write_conf || changed=$?
  [[ $changed -eq 0 || $changed -eq 10 ]] || die "could not write $CONF_DIR/slurm.conf"
  start_munge
  [[ $changed -eq 10 ]] && stop_daemons
  start_slurm
  wait_ready
  echo "local_slurm: up (node $NODE ready)"
}

cmd_status() {
  command -v sinfo >/dev/null || die "Slurm is not installed (run: $0 up)"
  timeout 10 sinfo || die "slurmctld does not answer"
  node_ready || die "node $NODE cannot take jobs"
}

case "${1:-}" in
  up) cmd_up ;;
  down) stop_daemons; echo "local_slurm: down" ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
