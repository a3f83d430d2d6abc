#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by start_local_cluster.sh, by the PIDs it recorded
# (slurmd, slurmctld, then munged). Safe to run when nothing is running.
set -euo pipefail

PIDDIR="${REPROSEG_SLURM_PIDDIR:-/run/reproseg-slurm}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo -n"

stop() {
  local name="$1" pidfile="$PIDDIR/$1.pid" pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    $SUDO kill "$pid" || true
    # Give it up to 10 s to exit cleanly, then force.
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && $SUDO kill -9 "$pid" || true
    echo "stop_local_cluster: stopped $name ($pid)" >&2
  fi
  $SUDO rm -f "$pidfile"
}

stop slurmd
stop slurmctld
if [ "${REPROSEG_SLURM_KEEP_MUNGE:-0}" != "1" ]; then
  stop munged
fi
