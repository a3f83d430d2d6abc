#!/usr/bin/env bash
# Installs the system packages the tests need when they are missing: Debian's chromium
# (report rendering), slurm-wlm and munge (the real one-node SLURM cluster of the HPC tests).
#
# Exits non-zero when something is missing and cannot be installed (not root and no
# passwordless sudo, apt-get failing, or the command still absent afterwards): a machine that
# cannot run the browser and SLURM tests must not look ready for them. On a developer machine
# without root, REPROSEG_ALLOW_MISSING_SYSTEM_DEPS=1 turns that into a warning (those tests
# then skip); under REPROSEG_REQUIRE_SYSTEM_TESTS=1 (set by .ci/run) it is always an error.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"  # the daemons live there; a non-root PATH may lack it
declare -A provides=([chromium]=chromium [slurmctld]=slurm-wlm [slurmd]=slurm-wlm [munged]=munge)
missing_cmds() {
  local cmd
  for cmd in chromium slurmctld slurmd munged; do
    command -v "$cmd" >/dev/null 2>&1 || echo "$cmd"
  done
}
give_up() {
  echo "system_deps: $1" >&2
  if [ "${REPROSEG_ALLOW_MISSING_SYSTEM_DEPS:-0}" = "1" ] && [ "${REPROSEG_REQUIRE_SYSTEM_TESTS:-0}" != "1" ]; then
    echo "system_deps: REPROSEG_ALLOW_MISSING_SYSTEM_DEPS=1: continuing; the browser / SLURM tests will be skipped" >&2
    exit 0
  fi
  echo "system_deps: install them as root (apt-get install chromium slurm-wlm munge), or set REPROSEG_ALLOW_MISSING_SYSTEM_DEPS=1 to run without those tests" >&2
  exit 1
}
mapfile -t cmds < <(missing_cmds)
[ ${#cmds[@]} -eq 0 ] && exit 0
need=()
for cmd in "${cmds[@]}"; do
  pkg=${provides[$cmd]}
  [[ " ${need[*]} " == *" $pkg "* ]] || need+=("$pkg")
done
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    give_up "missing ${need[*]} (commands: ${cmds[*]}) and not root (no passwordless sudo)"
  fi
fi
echo "system_deps: installing ${need[*]}" >&2
if ! $SUDO apt-get update -qq; then
  give_up "apt-get update failed; cannot install ${need[*]}"
fi
if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
  give_up "apt-get install ${need[*]} failed"
fi
mapfile -t still < <(missing_cmds)
[ ${#still[@]} -eq 0 ] || give_up "still missing after installing ${need[*]}: ${still[*]}"
echo "system_deps: installed ${need[*]}" >&2
