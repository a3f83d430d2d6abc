#!/usr/bin/env bash
# Installs the system packages the tests need when they are missing: Debian's chromium
# (report rendering), slurm-wlm and munge (the real one-node SLURM cluster of the HPC tests).
# Needs root (or passwordless sudo); otherwise it says which tests will be skipped.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v slurmctld >/dev/null 2>&1 || need+=(slurm-wlm)
command -v munged >/dev/null 2>&1 || need+=(munge)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "system_deps: not root; missing ${need[*]}: the browser / SLURM tests will be skipped" >&2
    exit 0
  fi
fi
echo "system_deps: installing ${need[*]}" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
