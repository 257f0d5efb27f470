#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, to run profiles/slurm for real (Debian's slurm-wlm + munge).
#
#   bash workflow/slurm/local-cluster.sh start        install if missing, configure, start, wait for `sinfo` idle
#   bash workflow/slurm/local-cluster.sh run [DIR]    the tiny workflow (tests/data/params-tiny.yaml) in a copy
#                                                     of the project (DIR, default a new temp dir) through
#                                                     `snakemake --profile profiles/slurm`, every job via sbatch
#   bash workflow/slurm/local-cluster.sh stop         kill the daemons this script started (by their pid files)
#   bash workflow/slurm/local-cluster.sh env          print `export SLURM_CONF=...` for sinfo/squeue/sbatch by hand
#
# Everything lives in one private directory, $ECHO_SLURM_DIR (default ~/.cache/echo/slurm): slurm.conf,
# cgroup.conf, its own munge key and socket, state, spool, logs, pid files, and jobcomp.txt (one line per
# finished job; no slurmdbd, so no `sacct` accounting). /etc is not touched; client commands find the
# cluster through SLURM_CONF, and srun inside jobs through a /run/slurm/conf link (see link_run_conf).
# No systemd or cgroups needed: proctrack/linuxproc, task/none. Run as root (the daemons run as root).
# Ports: $ECHO_SLURM_PORT (slurmctld, default 6817) and the next one (slurmd).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${ECHO_SLURM_DIR:-$HOME/.cache/echo/slurm}"
PORT="${ECHO_SLURM_PORT:-6817}"
CONF="$STATE/etc/slurm.conf"
SOCK="$STATE/run/munge.socket"
export SLURM_CONF="$CONF"

log() { echo "local-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
     && command -v munged >/dev/null && command -v mungekey >/dev/null; then
    return
  fi
  [ "$(id -u)" = 0 ] || die "slurm-wlm/munge missing and not root: apt-get install -y slurm-wlm munge"
  log "installing slurm-wlm and munge (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
  local host cpus mem
  host="$(hostname -s)"
  cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc obeys OMP_NUM_THREADS
  mem="$(free -m | awk '/^Mem:/ {print $2}')"
  mem=$((mem * 95 / 100))  # slurmd drains a node that reports less than RealMemory; leave a margin
  mkdir -p "$STATE"/{etc,run,log,state,spool}
  chmod 755 "$STATE" "$STATE/run"  # munged wants its socket directory world-executable
  cat > "$CONF.tmp" <<EOF
# Written by workflow/slurm/local-cluster.sh; one node, this machine.
ClusterName=echo-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool/slurmd-%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# reject at sbatch a job that asks for more than the node has, instead of leaving it pending forever
EnforcePartLimits=ALL
# finished jobs stay visible to squeue for an hour (the SLURM executor polls with squeue here)
MinJobAge=3600
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$CONF.tmp" "$CONF"
  # read only with a cgroup plugin; written so that no default /etc/slurm/cgroup.conf is looked for
  cat > "$STATE/etc/cgroup.conf" <<EOF
CgroupPlugin=autodetect
IgnoreSystemd=yes
EOF
}

# The SLURM executor's job step (snakemake-executor-plugin-slurm-jobstep 0.6.1) runs `srun` with every
# SLURM_* variable removed, SLURM_CONF included, so inside a job srun finds no configuration. Clients
# fall back to /run/slurm/conf/slurm.conf (where a configless slurmd keeps its copy): point it at ours,
# unless something else is already there.
RUNCONF=/run/slurm/conf
link_run_conf() {
  if [ -e "$RUNCONF/slurm.conf" ] || [ -L "$RUNCONF" ]; then
    [ "$(readlink -f "$RUNCONF/slurm.conf")" = "$(readlink -f "$CONF")" ] && return
    die "$RUNCONF/slurm.conf belongs to another SLURM (stop that one first): srun inside jobs would use it"
  fi
  mkdir -p "$(dirname "$RUNCONF")"
  ln -s "$STATE/etc" "$RUNCONF"
}

unlink_run_conf() {
  if [ -L "$RUNCONF" ] && [ "$(readlink "$RUNCONF")" = "$STATE/etc" ]; then rm -f "$RUNCONF"; fi
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
  local kdir="$STATE/munge"
  mkdir -p "$kdir"
  chmod 700 "$kdir"
  [ -s "$kdir/munge.key" ] || mungekey --create --keyfile="$kdir/munge.key"
  chmod 600 "$kdir/munge.key"
  if pid_alive "$STATE/run/munged.pid"; then return; fi
  munged --force --key-file="$kdir/munge.key" --socket="$SOCK" --pid-file="$STATE/run/munged.pid" \
    --log-file="$STATE/log/munged.log" --seed-file="$kdir/munged.seed"
  munge -S "$SOCK" -n | unmunge -S "$SOCK" >/dev/null || die "munge does not work; see $STATE/log/munged.log"
}

start() {
  install_packages
  write_config
  start_munge
  if ! pid_alive "$STATE/run/slurmctld.pid"; then
    slurmctld -f "$CONF" || die "slurmctld did not start; see $STATE/log/slurmctld.log"
  fi
  if ! pid_alive "$STATE/run/slurmd.pid"; then
    slurmd -f "$CONF" -N "$(hostname -s)" || die "slurmd did not start; see $STATE/log/slurmd.log"
  fi
  link_run_conf
  local i state
  for i in $(seq 1 120); do
    state="$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)"
    case "$state" in
      idle|mix|alloc) log "up: node $(hostname -s) $state ($(sinfo -h -N -o %c | head -1) CPUs); SLURM_CONF=$CONF"; return ;;
      drain*|down*)
        # a node left down/drained by an earlier run of this cluster: bring it back
        scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  sinfo -N -l >&2 || true
  tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  die "node not idle after 120 s"
}

stop() {
  local name pidf pid i
  for name in slurmd slurmctld munged; do
    pidf="$STATE/run/$name.pid"
    [ -s "$pidf" ] || continue
    pid="$(cat "$pidf")"
    # only a live process whose command is the daemon we started (not a recycled pid)
    if kill -0 "$pid" 2>/dev/null && grep -q "$name" "/proc/$pid/comm" 2>/dev/null; then
      kill "$pid"
      for i in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
      log "stopped $name ($pid)"
    fi
    rm -f "$pidf"
  done
  unlink_run_conf
}

# The tiny workflow through the SLURM executor. Local-cluster settings go on the command line, so the
# profile stays the real-cluster one: the node's default partition, no account, memory and CPUs that fit
# one small node (CPUs per job = the rule's threads), no GPUs (the node has none: gpu=0 for GPU nodes),
# squeue for status (no accounting database), short polling, and the SLURM logs kept for inspection.
run() {
  local dir="${1:-}"
  [ -n "$dir" ] || dir="$(mktemp -d /tmp/echo-slurm-run.XXXXXX)"
  mkdir -p "$dir"
  local py="${PYTHON:-python}"
  command -v "$py" >/dev/null || die "no python; activate .venv first"
  local name
  for name in Snakefile workflow profiles echo dvc.yaml; do
    rm -rf "${dir:?}/$name"
    cp -r "$ROOT/$name" "$dir/$name"
  done
  cp "$ROOT/tests/data/params-tiny.yaml" "$dir/params.yaml"
  find "$dir" -name __pycache__ -type d -prune -exec rm -rf {} +
  local gpu_rules
  gpu_rules="$(cd "$ROOT" && "$py" -c 'from echo.pipeline.dag import nodes; print(" ".join(f"{n.name}:gpu=0" for n in nodes() if n.gpu))')"
  log "running the tiny workflow in $dir"
  cd "$dir"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=1 \
  "$py" -m snakemake --profile profiles/slurm --workflow-profile none \
    --jobs "${ECHO_SLURM_JOBS:-4}" \
    --default-resources "mem_mb=${ECHO_SLURM_MEM_MB:-3000}" runtime=60 \
    --set-resources $gpu_rules \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 5 \
    --slurm-keep-successful-logs --latency-wait 10 \
    "${@:2}" results/tables.md
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  run) shift; run "${1:-}" "${@:2}" ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|run [DIR] [snakemake args...]|env" >&2; exit 2 ;;
esac
