#!/usr/bin/env bash
# Start a two-node Slurm cluster (n1, n2) on this one host for tests/test_slurm.py.
#
#   sudo bash .ci/slurm_setup.sh        # CI runs it as root on a fresh machine
#
# Idempotent: installs slurm-wlm and munge only if missing, rewrites slurm.conf only if it
# changed (and then restarts the daemons), starts only the daemons that are not running, and
# returns once `sinfo` shows both nodes idle. Debian's build; see shared/docs/environment.md.
set -euo pipefail

NODES=(n1 n2)
PORTS=(17001 17002)
CONF_DIR=/etc/slurm
SPOOL=/var/spool/slurm
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
WAIT_S=${SLURM_SETUP_WAIT_S:-90}

say() { echo "[slurm_setup] $*"; }
die() { echo "[slurm_setup] ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts daemons)"

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sinfo >/dev/null; then
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# 2. Names n1/n2 resolve to this host (the launch script does not need it, other tools may).
for n in "${NODES[@]}"; do
  grep -qE "^[^#]*[[:space:]]$n([[:space:]]|$)" /etc/hosts || echo "127.0.0.1 $n" >>/etc/hosts
done

# 3. munge: key, directories owned by munge, daemon.
if [[ ! -s /etc/munge/munge.key ]]; then
  say "creating munge key"
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
  munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
fi

# 4. slurm.conf for two one-CPU nodes on this host.
host=$(hostname -s)
mkdir -p "$CONF_DIR" "$SPOOL/ctld" "$LOG_DIR" "$RUN_DIR"
for n in "${NODES[@]}"; do mkdir -p "$SPOOL/d/$n"; done
new_conf=$(mktemp)
cat >"$new_conf" <<EOF
# Written by .ci/slurm_setup.sh: two one-CPU nodes on host $host, for tests only.
ClusterName=nashci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again after cred_expire seconds (default 120): keep tests quick.
AuthInfo=cred_expire=10
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d/%n
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
# Requeue: jobs may requeue themselves (nash.sbatch does after a preemption exit 75).
JobRequeue=1
# Seconds between SIGTERM and SIGKILL when a job is cancelled, requeued or hits its limit.
KillWait=15
# Keep finished jobs visible to scontrol for 10 min (no accounting database here).
MinJobAge=600
InactiveLimit=0
SlurmdTimeout=120
NodeName=${NODES[0]%?}[1-${#NODES[@]}] NodeHostname=$host NodeAddr=127.0.0.1 Port=${PORTS[0]}-${PORTS[-1]} CPUs=1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

alive() {  # the pid file $1 names a running process called $2 (not a stale, reused pid)
  [[ -s $1 ]] && [[ $(cat "/proc/$(cat "$1")/comm" 2>/dev/null) == "$2" ]]
}
stop() {  # stop the daemon $2 whose pid file is $1, if running
  if alive "$1" "$2"; then
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$1"
}

if ! cmp -s "$new_conf" "$CONF_DIR/slurm.conf"; then
  say "writing $CONF_DIR/slurm.conf"
  for n in "${NODES[@]}"; do stop "$RUN_DIR/slurmd-$n.pid" slurmd; done
  stop "$RUN_DIR/slurmctld.pid" slurmctld
  install -m 0644 "$new_conf" "$CONF_DIR/slurm.conf"
fi
rm -f "$new_conf"

# 5. Daemons: controller, then one slurmd per node name.
if ! alive "$RUN_DIR/slurmctld.pid" slurmctld; then
  say "starting slurmctld"
  slurmctld
fi
for _ in $(seq 1 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld is not up (see $LOG_DIR/slurmctld.log)"
for n in "${NODES[@]}"; do
  if ! alive "$RUN_DIR/slurmd-$n.pid" slurmd; then
    say "starting slurmd -N $n"
    slurmd -N "$n"
  fi
done

# 6. Wait until both nodes are idle (resume them if an earlier run left them down).
deadline=$((SECONDS + WAIT_S))
while :; do
  states=$(sinfo -h -N -o '%N %t' | sort -u)
  idle=$(grep -c ' idle$' <<<"$states" || true)
  [[ $idle -ge ${#NODES[@]} ]] && break
  if grep -qE ' (down|drain|drng|fail)\*?$' <<<"$states"; then
    scontrol update NodeName="$(IFS=,; echo "${NODES[*]}")" State=RESUME 2>/dev/null || true
  fi
  ((SECONDS < deadline)) || die "nodes not idle after ${WAIT_S}s: $(tr '\n' ' ' <<<"$states")"
  sleep 1
done
say "cluster up: $(tr '\n' ' ' <<<"$states")"
