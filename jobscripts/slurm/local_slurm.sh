#!/usr/bin/env bash
# A real Slurm on this one machine (Debian's slurmctld, slurmd and munge packages, 22.05):
#   jobscripts/slurm/local_slurm.sh start     # installs the packages if missing, writes the config, starts
#   jobscripts/slurm/local_slurm.sh status    # daemons and `sinfo`
#   jobscripts/slurm/local_slurm.sh stop      # stops the daemons, removes state and spool
# One node (this host's name) with CPUS (default 8) CPUs in partition `debug` (default) and a
# high-priority partition `urgent` on the same node whose jobs pre-empt `debug` jobs by requeueing them
# (the job gets its --signal at pre-emption time, then GraceTime seconds to checkpoint). MPI steps
# use PMI-2 (srun --mpi=pmi2 by default). Needs root. The config goes to /etc/slurm/slurm.conf (where
# sbatch/srun look), state and logs to $SLURM_DIR (default /var/lib/hpclm-slurm).
set -euo pipefail
ACTION="${1:-status}"
SLURM_DIR="${SLURM_DIR:-/var/lib/hpclm-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by hpclm jobscripts/slurm/local_slurm.sh"
CPUS="${CPUS:-8}"
GRACE="${GRACE:-60}"
NODE="$(hostname -s)"

die() { echo "local_slurm: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (it installs packages and runs slurmctld, slurmd and munged)"

install_packages() {
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
     || ! command -v sbatch >/dev/null; then
    echo "[local_slurm] installing slurmctld slurmd slurm-client munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
  fi
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; move it away first"
  fi
  mkdir -p "$SLURM_DIR"/{state,spool,log} /etc/slurm
  # Job ids never repeat across restarts (the state is wiped at stop): MPICH names a step's shared-memory
  # segment after its PMI job id ("3.0" -> /dev/shm/mpich_shm_c141a9dc_0), and a segment left behind
  # by a killed step made the next step with that id hang in MPI_Init (seen in CI: after a fresh start
  # the second job's first step, id 3.0, met a stale segment of an earlier run).
  local first_job_id=$(( $(date +%s) % 50000000 + 1000 ))
  cat > "$CONF" <<CONF
$MARK
ClusterName=hpclm
FirstJobId=$first_job_id
SlurmctldHost=$NODE
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SchedulerParameters=preempt_send_user_signal
KillWait=10
MinJobAge=3600
InactiveLimit=0
MessageTimeout=20
NodeName=$NODE CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=$GRACE
PartitionName=urgent Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install_packages
  write_conf
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
  if ! running /run/munge/munged.pid; then
    [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; \
      chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key; }
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
  fi
  running "$SLURM_DIR/slurmctld.pid" || slurmctld
  running "$SLURM_DIR/slurmd.pid" || slurmd
  for _ in $(seq 60); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "[local_slurm] up: node $NODE ($CPUS CPUs), partitions debug (default) and urgent"; sinfo; return 0
    fi
    sleep 0.5
  done
  tail -5 "$SLURM_DIR/log/slurmctld.log" "$SLURM_DIR/log/slurmd.log" >&2 || true
  die "slurm did not come up within 30 s (logs above)"
}

stop_pidfile() {
  local f="$1" pid
  running "$f" || return 0
  pid="$(cat "$f")"
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  if command -v scancel >/dev/null && running "$SLURM_DIR/slurmctld.pid"; then scancel --full --quiet -u root 2>/dev/null || true; fi
  stop_pidfile "$SLURM_DIR/slurmd.pid"
  stop_pidfile "$SLURM_DIR/slurmctld.pid"
  stop_pidfile /run/munge/munged.pid
  rm -rf "$SLURM_DIR"
  if [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; then rm -f "$CONF"; fi
  echo "[local_slurm] stopped"
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status)
    for d in "/run/munge/munged.pid munged" "$SLURM_DIR/slurmctld.pid slurmctld" "$SLURM_DIR/slurmd.pid slurmd"; do
      set -- $d; if running "$1"; then echo "$2: running (pid $(cat "$1"))"; else echo "$2: not running"; fi
    done
    running "$SLURM_DIR/slurmctld.pid" && sinfo || true ;;
  *) die "usage: local_slurm.sh start|stop|status" ;;
esac
