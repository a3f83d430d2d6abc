#!/usr/bin/env bash
# Start a real one-node SLURM cluster on this machine (munged + slurmctld + slurmd), for the
# HPC tests and for users who want to try `snakemake --profile profiles/slurm` locally.
#
#   sudo bash tests/slurm/start_local_cluster.sh      # then: sinfo; snakemake --profile profiles/slurm
#   sudo bash tests/slurm/stop_local_cluster.sh
#
# What it does (Debian/Ubuntu, root or passwordless sudo):
#   - installs slurm-wlm and munge with apt when they are missing (apt-get update first);
#   - creates the munge key when missing and starts munged as the munge user;
#   - writes /etc/slurm/slurm.conf for this host: short hostname, `nproc` CPUs, ~80 % of the
#     memory, select/cons_tres, proctrack/linuxproc, task/none, no accounting database and
#     MinJobAge=600 (finished jobs stay visible to `squeue`, which Snakemake then uses as its
#     status command since there is no `sacct`), no cgroups;
#   - starts slurmctld and slurmd, recording their PIDs in $REPROSEG_SLURM_PIDDIR;
#   - waits until `sinfo` shows the node idle.
# Idempotent: when the cluster already answers and the node is idle/mixed/allocated, it only
# prints its state and exits 0.
set -euo pipefail

PIDDIR="${REPROSEG_SLURM_PIDDIR:-/run/reproseg-slurm}"
CONF=/etc/slurm/slurm.conf
TIMEOUT="${REPROSEG_SLURM_WAIT_S:-60}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "start_local_cluster: needs root or passwordless sudo" >&2
    exit 2
  fi
fi

log() { echo "start_local_cluster: $*" >&2; }

node_state() { sinfo -h -N -o %T 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' || true; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Already running? Nothing to do (do not rewrite the config under live daemons).
if alive "$PIDDIR/slurmctld.pid" && alive "$PIDDIR/slurmd.pid"; then
  state="$(node_state)"
  case "$state" in
    idle | mixed | allocated | completing)
      log "already running (node $state)"
      exit 0
      ;;
  esac
fi

# 1. Packages.
need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need+=(munge)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

$SUDO mkdir -p "$PIDDIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm

# 2. munge: key, runtime dir, daemon as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  $SUDO mkdir -p /etc/munge
  $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
$SUDO mkdir -p /run/munge /var/lib/munge /var/log/munge
$SUDO chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
$SUDO chmod 0700 /etc/munge /var/lib/munge /var/log/munge
$SUDO chmod 0400 /etc/munge/munge.key
$SUDO chmod 0755 /run/munge
if ! alive "$PIDDIR/munged.pid" && ! munge -n </dev/null >/dev/null 2>&1; then
  log "starting munged"
  $SUDO runuser -u munge -- munged --force --pid-file=/run/munge/munged.pid
  for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  $SUDO cp /run/munge/munged.pid "$PIDDIR/munged.pid"
fi
munge -n </dev/null | unmunge >/dev/null || { log "munge does not work"; exit 1; }

# 3. slurm.conf for this host.
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)"
TMP_CONF="$(mktemp)"
cat >"$TMP_CONF" <<EOF
# Written by tests/slurm/start_local_cluster.sh: a one-node test cluster on $HOST.
ClusterName=reproseg-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
SlurmctldPidFile=$PIDDIR/slurmctld.pid
SlurmdPidFile=$PIDDIR/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in containers: plain process tracking, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: sacct has nothing, so Snakemake polls squeue; MinJobAge keeps finished jobs
# visible there for 10 minutes so their final state (COMPLETED/FAILED/CANCELLED) is seen.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
$SUDO install -m 0644 "$TMP_CONF" "$CONF"
rm -f "$TMP_CONF"
log "wrote $CONF ($HOST: $CPUS CPUs, $MEM_MB MB)"

# 4. Daemons (a stale half-started pair is restarted cleanly).
for d in slurmd slurmctld; do
  if alive "$PIDDIR/$d.pid"; then $SUDO kill "$(cat "$PIDDIR/$d.pid")" || true; sleep 1; fi
done
log "starting slurmctld and slurmd"
# -c: clean start (no saved jobs from a previous test session), -i: ignore state-file errors.
$SUDO slurmctld -c -i
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
$SUDO slurmd -N "$HOST"

# 5. Wait for the node to come up idle.
for _ in $(seq "$((TIMEOUT * 2))"); do
  state="$(node_state)"
  if [ "$state" = "idle" ]; then
    log "cluster up: $(sinfo -h -o '%P %D %T %C' | head -n1)"
    exit 0
  fi
  # A node left down/drained by an earlier session is brought back.
  case "$state" in down | drained | draining | fail) $SUDO scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;; esac
  sleep 0.5
done
log "node not idle after ${TIMEOUT}s (state: ${state:-none}); see /var/log/slurm/"
exit 1
