# Shared by start-local-cluster.sh and stop-local-cluster.sh (sourced, not run).
# shellcheck shell=bash

# pid_of PIDFILE NAME: print the pid in PIDFILE if that process is alive, is called NAME and
# is not a zombie.
pid_of() {
  local file=$1 name=$2 pid comm stat
  [[ -n $file && -r $file ]] || return 1
  read -r pid <"$file" 2>/dev/null || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  read -r comm <"/proc/$pid/comm" 2>/dev/null || return 1
  [[ $comm == "$name" ]] || return 1
  read -r stat <"/proc/$pid/stat" 2>/dev/null || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]] || return 1
  printf '%s\n' "$pid"
}
