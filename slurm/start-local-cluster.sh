#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian 12, root, no systemd).
#
# Installs Debian's slurm + munge (+ slurmdbd/MariaDB so that `sacct` works), writes
# /etc/slurm/slurm.conf for this host, starts munged, mariadbd, slurmdbd, slurmctld and slurmd
# as plain background daemons and waits until `sinfo` shows the node up.
# Idempotent: on a running cluster it is a ~0.1 s no-op; when the generated config differs
# from the one in place it restarts slurmctld + slurmd. See slurm/README.md.
#
# Knobs (environment):
#   SLURM_LOCAL_DIR=/tmp/slurm-local   state, spool, logs and pid files
#   SLURM_LOCAL_CPUS=$(nproc)          > nproc oversubscribes the cores (config_overrides)
#   SLURM_LOCAL_DBD=1                  1 = slurmdbd + MariaDB (sacct works), 0 = no accounting
#   SLURM_LOCAL_GPUS=0                 GPUs to declare (gres/gpu): the real /dev/nvidia* if any, else stand-ins
#   SLURM_LOCAL_CLEAN=0                1 = wipe saved jobs and the accounting DB first
#   SLURM_LOCAL_PARTITION=debug        name of the (default) partition
#   SLURM_LOCAL_TIMEOUT=60             seconds to wait for each daemon before giving up
set -euo pipefail
# shellcheck source=slurm/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DIR=${SLURM_LOCAL_DIR:-/tmp/slurm-local}
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
DBD=${SLURM_LOCAL_DBD:-1}
GPUS=${SLURM_LOCAL_GPUS:-0}
CLEAN=${SLURM_LOCAL_CLEAN:-0}
PARTITION=${SLURM_LOCAL_PARTITION:-debug}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-60}

ETC=/etc/slurm
# Pid records of the daemons this script started that do not live in $DIR (munged, mariadbd),
# and the lock. A fixed place, so that the stop script finds them whatever SLURM_LOCAL_DIR is.
RUN=/run/slurm-local
LOG=$DIR/log
PACKAGES=(slurmctld slurmd slurm-client munge)
DBD_PACKAGES=(slurmdbd slurm-wlm-mysql-plugin mariadb-server)

T0=${EPOCHREALTIME/./}   # microseconds, no subprocess
NODE_STATE=
GPU_KIND=
POLICY_RC_ADDED=0

say() { printf 'slurm-local: %s\n' "$*" >&2; }

die() {
  say "ERROR: $*"
  exit 1
}

# Seconds since the script started, e.g. "1.4".
elapsed() {
  local us=$((${EPOCHREALTIME/./} - T0))
  printf '%d.%d' $((us / 1000000)) $((us % 1000000 / 100000))
}

cleanup() {
  # Remove the policy-rc.d we added, so we leave the image as we found it.
  if ((POLICY_RC_ADDED)); then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT

check_knobs() {
  [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_CPUS must be a positive integer, got '$CPUS'"
  [[ $GPUS =~ ^[0-9]+$ ]] || die "SLURM_LOCAL_GPUS must be a non-negative integer, got '$GPUS'"
  [[ $DBD == [01] ]] || die "SLURM_LOCAL_DBD must be 0 or 1, got '$DBD'"
  [[ $CLEAN == [01] ]] || die "SLURM_LOCAL_CLEAN must be 0 or 1, got '$CLEAN'"
  [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_TIMEOUT must be a positive integer"
  [[ $PARTITION =~ ^[A-Za-z0-9_-]+$ ]] || die "SLURM_LOCAL_PARTITION must match [A-Za-z0-9_-]+, got '$PARTITION'"
  [[ $DIR == /* ]] || die "SLURM_LOCAL_DIR must be an absolute path, got '$DIR'"
  ((EUID == 0)) || die "must run as root (it installs packages and runs the daemons as root)"
}


# wait_for SECONDS WHAT LOGFILE CMD...: poll CMD every 0.1 s; die with the log's tail on timeout.
wait_for() {
  local secs=$1 what=$2 logfile=$3
  shift 3
  local deadline=$((${EPOCHREALTIME/./} + secs * 1000000))
  until "$@"; do
    if ((${EPOCHREALTIME/./} > deadline)); then
      say "ERROR: $what not ready after ${secs} s${NODE_STATE:+ (last sinfo state: $NODE_STATE)}. Last lines of $logfile:"
      tail -n 15 "$logfile" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
}

# stop_pid NAME PIDFILE: SIGTERM, wait up to 15 s, then SIGKILL.
stop_pid() {
  local name=$1 file=$2 pid i
  pid=$(pid_of "$file" "$name") || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    pid_of "$file" "$name" >/dev/null || return 0
    sleep 0.1
  done
  say "$name (pid $pid) ignored SIGTERM for 15 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_of "$file" "$name" >/dev/null || return 0
    sleep 0.1
  done
}

# close_fds: in a subshell about to exec a daemon, close every fd above 2. munged, mariadbd and
# slurmdbd keep whatever they inherit: our lock on fd 9 would then be held forever, and a
# caller's pipe (a CI runner's log collector, `start | tee`) would never see EOF and hang.
close_fds() {
  local fd
  for fd in /proc/self/fd/*; do
    fd=${fd##*/}
    if ((fd > 2)); then exec {fd}>&- 2>/dev/null || true; fi
  done
}

# spawn LOGNAME CMD...: run a self-daemonizing daemon from / with no inherited fds but stdio,
# which goes to $LOG/LOGNAME.out.
spawn() {
  local logname=$1
  shift
  (
    close_fds
    cd /
    exec "$@"
  ) </dev/null >>"$LOG/$logname.out" 2>&1
}

# conf_get KEY FILE: value of KEY= in a slurm-style config file (empty if absent).
conf_get() {
  [[ -r $2 ]] || return 0
  sed -n "s/^$1=\([^[:space:]#]*\).*/\1/p" "$2" | head -n 1
}

# ---------------------------------------------------------------------------------------------
install_packages() {
  local want=("${PACKAGES[@]}") missing
  if ((DBD)); then want+=("${DBD_PACKAGES[@]}"); fi
  # One dpkg-query for all (~20 ms): "ii" = installed and configured.
  missing=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${want[@]}" 2>/dev/null |
    awk '$1 != "ii" {print $2}' || true)
  if [[ -z $missing ]] && (($(dpkg-query -W "${want[@]}" 2>/dev/null | wc -l) == ${#want[@]})); then
    return 0
  fi
  say "installing packages: ${want[*]}"
  # Keep the package scripts from starting daemons (there is no init system to own them).
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    POLICY_RC_ADDED=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  local aptlog=$DIR/log/apt.log
  # The apt lock may be held by another session on this machine: wait for it, don't fail.
  if ! { apt-get -q update && apt-get -q install -y --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "${want[@]}"; } >"$aptlog" 2>&1 9>&-; then
    tail -n 20 "$aptlog" >&2
    die "package installation failed (full log: $aptlog)"
  fi
  cleanup
  POLICY_RC_ADDED=0
  say "packages installed ($(elapsed) s)"
}

# ---------------------------------------------------------------------------------------------
# Config generation. Each writer sets CHANGED_* when the file on disk changed.
CHANGED_SLURM=0
CHANGED_DBD=0

# write_if_changed FILE MODE CONTENT: replace FILE only if CONTENT differs; return 0 if replaced.
write_if_changed() {
  local file=$1 mode=$2 content=$3
  if [[ -f $file ]] && [[ $(<"$file") == "${content%$'\n'}" ]]; then
    return 1
  fi
  local tmp
  tmp=$(mktemp "$file.XXXXXX")
  printf '%s' "$content" >"$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$file"
}

node_line() {
  local detected
  # The node's real topology and memory, e.g.
  # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
  detected=$(slurmd -C 2>/dev/null | head -n 1)
  [[ $detected == NodeName=* ]] || die "'slurmd -C' printed no NodeName line"
  NODE=${detected%% *}
  NODE=${NODE#NodeName=}
  local rest=${detected#* } mem
  mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$detected")
  local nproc
  nproc=$(nproc)
  if ((CPUS == nproc)); then
    NODE_LINE="NodeName=$NODE NodeAddr=127.0.0.1 $rest"
  else
    # A CPU count that differs from the hardware: no topology, slurmd told to trust the config.
    NODE_LINE="NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem"
  fi
  if ((GPUS > 0)); then NODE_LINE+=" Gres=gpu:$GPUS"; fi
  NODE_LINE+=" State=UNKNOWN"
}

write_slurm_conf() {
  local conf
  conf="# Generated by slurm/start-local-cluster.sh; rewritten on every start.
# slurm-local-dir=$DIR
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
"
  if ((DBD)); then
    conf+="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
"
  else
    conf+="AccountingStorageType=accounting_storage/none
"
  fi
  conf+="JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MaxArraySize=100001
MaxJobCount=200000
KillWait=10
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
"
  if ((CPUS > $(nproc))); then conf+="SlurmdParameters=config_overrides
"; fi
  if ((GPUS > 0)); then conf+="GresTypes=gpu
"; fi
  conf+="$NODE_LINE
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
"
  if write_if_changed "$ETC/slurm.conf" 644 "$conf"; then CHANGED_SLURM=1; fi

  # GPUs: the real /dev/nvidia<i> where the machine has them, else stand-ins: character devices
  # cloned from /dev/null. SLURM binds by index and (task/none) constrains no device, so a stand-in
  # is allocated, queued for and exported (CUDA_VISIBLE_DEVICES, SLURM_JOB_GPUS) as a GPU is.
  # Regular files give an empty CUDA_VISIBLE_DEVICES, and Count= without File= drains the node.
  if ((GPUS > 0)); then
    local i files real gpu_dir
    real=$(find /dev -maxdepth 1 -regex '/dev/nvidia[0-9]+' -type c 2>/dev/null | wc -l)
    if ((real > 0)); then
      ((real >= GPUS)) || die "SLURM_LOCAL_GPUS=$GPUS but this machine has $real GPU(s) (/dev/nvidia[0-9]*)"
      gpu_dir=/dev
      GPU_KIND="real, $gpu_dir/nvidia*"
    else
      gpu_dir=$DIR/fakegpu
      GPU_KIND="stand-ins, $gpu_dir"
      mkdir -p "$gpu_dir"
      for ((i = 0; i < GPUS; i++)); do
        [[ -c $gpu_dir/nvidia$i ]] || mknod -m 666 "$gpu_dir/nvidia$i" c 1 3
      done
    fi
    if ((GPUS == 1)); then files=nvidia0; else files="nvidia[0-$((GPUS - 1))]"; fi
    if write_if_changed "$ETC/gres.conf" 644 "# Generated by slurm/start-local-cluster.sh
Name=gpu File=$gpu_dir/$files
"; then CHANGED_SLURM=1; fi
  elif [[ -e $ETC/gres.conf ]]; then
    rm -f "$ETC/gres.conf"
    CHANGED_SLURM=1
  fi
}

write_slurmdbd_conf() {
  # Mode 600 and owned by SlurmUser, or slurmdbd refuses to start.
  # StorageUser=root: Debian's root@localhost authenticates by unix socket, no password needed.
  if write_if_changed "$ETC/slurmdbd.conf" 600 "# Generated by slurm/start-local-cluster.sh; rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$DIR/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
"; then CHANGED_DBD=1; fi
}

# ---------------------------------------------------------------------------------------------
munge_ok() { munge -n </dev/null >/dev/null 2>&1; }

start_munged() {
  munge_ok && return 0
  [[ -s /etc/munge/munge.key ]] || { mungekey --create >/dev/null 2>&1 && chown munge:munge /etc/munge/munge.key; }
  install -d -o munge -g munge -m 0755 /run/munge
  say "starting munged"
  spawn munged runuser -u munge -- /usr/sbin/munged
  wait_for 10 munged "$LOG/munged.out" munge_ok
  # Record it, so that the stop script stops only a munged we started.
  cp /run/munge/munged.pid "$RUN/munged.pid"
}

mariadb_ok() { mariadb -N -e 'select 1' </dev/null >/dev/null 2>&1; }

start_mariadbd() {
  mariadb_ok && return 0
  say "starting mariadbd"
  install -d -o mysql -g root -m 0755 /run/mysqld "$DIR/mysqld"
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    # The package's postinst normally does this; redo it if the datadir was wiped.
    mariadb-install-db --user=mysql >>"$LOG/mariadb.log" 2>&1
  fi
  # The innodb settings silence slurmdbd's "Database settings not recommended" warning.
  # mariadbd does not daemonize itself: background it in its own session.
  (
    close_fds
    cd /
    exec setsid /usr/sbin/mariadbd --user=mysql --skip-networking \
      --pid-file="$DIR/mysqld/mariadbd.pid" \
      --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900
  ) </dev/null >>"$LOG/mariadb.log" 2>&1 &
  wait_for "$TIMEOUT" mariadbd "$LOG/mariadb.log" mariadb_ok
  cp "$DIR/mysqld/mariadbd.pid" "$RUN/mariadbd.pid"
}

slurmdbd_ok() {
  # sacctmgr prints an error but may still exit 0 when it cannot reach slurmdbd: check both.
  local out
  out=$(sacctmgr -n -P list cluster format=cluster </dev/null 2>&1) || return 1
  [[ $out != *rror* ]]
}

start_slurmdbd() {
  local pidfile=$DIR/slurmdbd.pid
  if ((CHANGED_DBD)); then
    local old
    old=$(conf_get PidFile "$OLD_DBD_CONF")
    if pid_of "$old" slurmdbd >/dev/null || pid_of "$pidfile" slurmdbd >/dev/null; then
      say "slurmdbd.conf changed: restarting slurmdbd"
      stop_pid slurmdbd "$old"
      stop_pid slurmdbd "$pidfile"
    fi
  fi
  if ! pid_of "$pidfile" slurmdbd >/dev/null; then
    say "starting slurmdbd"
    spawn slurmdbd /usr/sbin/slurmdbd
    wait_for "$TIMEOUT" slurmdbd "$LOG/slurmdbd.log" slurmdbd_ok
  fi
}

ctld_ok() { [[ $(scontrol ping </dev/null 2>/dev/null) == *"is UP"* ]]; }

# Stop slurmctld and slurmd by the pid files named in the config that was in place when we
# started (it may name another SLURM_LOCAL_DIR than ours).
stop_ctld_and_slurmd() {
  stop_pid slurmd "$(conf_get SlurmdPidFile "$OLD_CONF")"
  stop_pid slurmctld "$(conf_get SlurmctldPidFile "$OLD_CONF")"
  stop_pid slurmd "$DIR/slurmd.pid"
  stop_pid slurmctld "$DIR/slurmctld.pid"
}

node_ready() {
  NODE_STATE=$(sinfo -h -N -n "$NODE" -o '%t' </dev/null 2>/dev/null | head -n 1)
  case $NODE_STATE in
  idle | mix | alloc | comp | resv | plnd) return 0 ;;
  down | drain | drng | drained | fail | failg | inval)
    # Resume once: a node left DOWN/DRAINED (e.g. by an earlier bad gres config) stays so.
    if ((!RESUMED)); then
      RESUMED=1
      say "node $NODE is $NODE_STATE ($(sinfo -h -N -n "$NODE" -o '%E' 2>/dev/null | head -n 1)): resuming it"
      scontrol update nodename="$NODE" state=resume </dev/null >/dev/null 2>&1 || true
    fi
    return 1
    ;;
  *) return 1 ;;
  esac
}

clean_state() {
  say "SLURM_LOCAL_CLEAN=1: wiping the saved jobs and the accounting DB"
  stop_ctld_and_slurmd
  stop_pid slurmdbd "$(conf_get PidFile "$OLD_DBD_CONF")"
  stop_pid slurmdbd "$DIR/slurmdbd.pid"
  rm -rf "${DIR:?}/ctld" "${DIR:?}/spool"
  mkdir -p "$DIR/ctld" "$DIR/spool"
  if ((DBD)); then
    mariadb -e 'DROP DATABASE IF EXISTS slurm_acct_db' </dev/null
  fi
}

# ---------------------------------------------------------------------------------------------
main() {
  check_knobs
  mkdir -p "$DIR/ctld" "$DIR/spool" "$LOG" "$RUN" "$ETC"
  # Serialise concurrent starts/stops: the cluster is machine-wide.
  exec 9>"$RUN/lock"
  flock -w 600 9 || die "another start/stop holds $RUN/lock"

  install_packages

  # Keep the configs in place: their pid file paths name the daemons that run now.
  OLD_CONF=$(mktemp)
  OLD_DBD_CONF=$(mktemp)
  trap 'cleanup; rm -f "$OLD_CONF" "$OLD_DBD_CONF"' EXIT
  if [[ -f $ETC/slurm.conf ]]; then cp "$ETC/slurm.conf" "$OLD_CONF"; fi
  if [[ -f $ETC/slurmdbd.conf ]]; then cp "$ETC/slurmdbd.conf" "$OLD_DBD_CONF"; fi
  node_line
  write_slurm_conf
  if ((DBD)); then write_slurmdbd_conf; fi

  start_munged
  if ((DBD)); then start_mariadbd; fi
  if ((CLEAN)); then clean_state; fi
  if ((DBD)); then start_slurmdbd; fi

  local ctld_pidfile=$DIR/slurmctld.pid slurmd_pidfile=$DIR/slurmd.pid
  if ((CHANGED_SLURM)); then
    # A config change (DBD on/off, CPUs, GPUs, dir...) needs both daemons restarted:
    # slurmctld rejects a slurmd whose slurm.conf differs.
    if pid_of "$(conf_get SlurmctldPidFile "$OLD_CONF")" slurmctld >/dev/null ||
      pid_of "$(conf_get SlurmdPidFile "$OLD_CONF")" slurmd >/dev/null; then
      say "slurm.conf changed: restarting slurmctld and slurmd"
      local running
      running=$(squeue -h -t R,CG -o '%i' </dev/null 2>/dev/null | wc -l || true)
      if ((running > 0)); then
        # Measured: with another CPU count slurmctld aborts and requeues the running jobs
        # ("change in socket/core configuration"), and requeued jobs wait ~120 s (BeginTime).
        say "WARNING: $running running job(s); a changed CPU/GPU layout requeues them"
      fi
      stop_ctld_and_slurmd
    fi
  fi
  if ! pid_of "$ctld_pidfile" slurmctld >/dev/null; then
    say "starting slurmctld"
    spawn slurmctld /usr/sbin/slurmctld
  fi
  wait_for "$TIMEOUT" "slurmctld ('scontrol ping')" "$LOG/slurmctld.log" ctld_ok
  if ! pid_of "$slurmd_pidfile" slurmd >/dev/null; then
    say "starting slurmd"
    spawn slurmd /usr/sbin/slurmd
  fi
  RESUMED=0
  wait_for "$TIMEOUT" "node $NODE (state in sinfo not idle)" "$LOG/slurmd.log" node_ready
  say "ready in $(elapsed) s: node $NODE $NODE_STATE, $CPUS CPUs, $GPUS GPUs${GPU_KIND:+ ($GPU_KIND)}, partition $PARTITION, accounting $( ((DBD)) && echo slurmdbd || echo none)"
}

main "$@"
