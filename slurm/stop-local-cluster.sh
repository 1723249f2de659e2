#!/usr/bin/env bash
# Stop the single-node SLURM cluster that start-local-cluster.sh started.
#
# Cancels all jobs (of every user: the cluster is machine-wide) unless SLURM_LOCAL_KEEP_JOBS=1,
# then `scontrol shutdown` (slurmctld and slurmd save their state and exit), then stops
# slurmdbd, mariadbd and munged by pid. munged and mariadbd are stopped only if the start
# script started them. If a daemon does not exit it gets SIGTERM, then SIGKILL, by pid.
# Idempotent: fine when nothing runs. Packages, configs and saved state stay.
#
# Knobs (environment):
#   SLURM_LOCAL_KEEP_JOBS=0   1 = leave jobs in the saved state (running ones keep running
#                             under slurmstepd and report when the cluster is started again)
set -euo pipefail
# shellcheck source=slurm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KEEP_JOBS=${SLURM_LOCAL_KEEP_JOBS:-0}
ETC=/etc/slurm
RUN=/run/slurm-local # pid records of munged/mariadbd (only if the start script started them)
T0=${EPOCHREALTIME/./}

say() { printf 'slurm-local: %s\n' "$*" >&2; }

elapsed() {
  local us=$((${EPOCHREALTIME/./} - T0))
  printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}


# wait_gone SECONDS NAME PIDFILE: 0 once the process is gone, 1 if it is still there.
wait_gone() {
  local secs=$1 name=$2 file=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    pid_of "$file" "$name" >/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# stop_pid NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL. Removes the pid file.
stop_pid() {
  local name=$1 file=$2 pid
  if pid=$(pid_of "$file" "$name"); then
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone 15 "$name" "$file"; then
      say "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone 5 "$name" "$file" || say "WARNING: $name (pid $pid) is still there"
    fi
  fi
  if [[ -n $file ]]; then rm -f "$file"; fi
}

# conf_get KEY FILE: value of KEY= in a slurm-style config file (empty if absent).
conf_get() {
  [[ -r $2 ]] || return 0
  sed -n "s/^$1=\([^[:space:]#]*\).*/\1/p" "$2" | head -n 1
}

ctld_ok() { [[ $(scontrol ping </dev/null 2>/dev/null) == *"is UP"* ]]; }

cancel_jobs() {
  local ids
  # %F = the array job id (the job id for a plain job): one scancel id per array.
  ids=$(squeue -h -o '%F' </dev/null 2>/dev/null | sort -u) || return 0
  [[ -n $ids ]] || return 0
  say "cancelling $(wc -w <<<"$ids") job(s)/array(s) of all users"
  # shellcheck disable=SC2086 # one id per word
  scancel $ids </dev/null || true
  # Let them finish (SIGTERM, then SIGKILL after KillWait=10 s), so that the kills and the
  # accounting records go through before the daemons stop.
  local i
  for ((i = 0; i < 150; i++)); do
    [[ -z $(squeue -h -o '%i' </dev/null 2>/dev/null) ]] && return 0
    sleep 0.1
  done
  say "WARNING: jobs still completing after 15 s; shutting down anyway"
}

main() {
  ((EUID == 0)) || { say "ERROR: must run as root"; exit 1; }
  mkdir -p "$RUN"
  # Same lock as the start script: don't stop a cluster while it is being started.
  exec 9>"$RUN/lock"
  flock -w 600 9 || { say "ERROR: another start/stop holds $RUN/lock"; exit 1; }

  local conf=$ETC/slurm.conf dbdconf=$ETC/slurmdbd.conf
  local ctld_pid slurmd_pid dbd_pid
  ctld_pid=$(conf_get SlurmctldPidFile "$conf")
  slurmd_pid=$(conf_get SlurmdPidFile "$conf")
  dbd_pid=$(conf_get PidFile "$dbdconf")

  if command -v scontrol >/dev/null && pid_of "$ctld_pid" slurmctld >/dev/null && ctld_ok; then
    if [[ $KEEP_JOBS != 1 ]]; then cancel_jobs; fi
    say "scontrol shutdown"
    scontrol shutdown </dev/null >/dev/null 2>&1 || true
    # Both save their state and exit in a few seconds; stop_pid below catches stragglers.
    wait_gone 20 slurmctld "$ctld_pid" || true
    wait_gone 10 slurmd "$slurmd_pid" || true
  fi
  stop_pid slurmd "$slurmd_pid"
  stop_pid slurmctld "$ctld_pid"
  stop_pid slurmdbd "$dbd_pid"
  stop_pid mariadbd "$RUN/mariadbd.pid"
  stop_pid munged "$RUN/munged.pid"
  say "stopped in $(elapsed) s"
}

main "$@"
