# Sourced by jobscripts/*.sbatch (from the submit directory): time-limit signals and pre-emption.
#   step srun hpclm train ...     # runs the step; a USR1/TERM to the batch shell is passed on to it
#   requeue_unless_finished DIR   # after the step: requeue this job if the run in DIR stopped early
# With `#SBATCH --signal=B:USR1@N` Slurm signals only the batch shell, N to N + 30 s before the time
# limit (slurmctld checks every 30 s and signals up to one check early);
# bash runs a trap only between commands, so the step runs in the background and the trap forwards
# the signal to srun, which passes it to every task. At pre-emption (PreemptMode=REQUEUE with a
# GraceTime) Slurm 22.05 sends SIGTERM to the tasks themselves instead. Either way hpclm train
# checkpoints at the next step and exits 0, the checkpoint is short of max_steps, this job requeues
# itself, and the requeued job (same id, SLURM_RESTART_COUNT > 0) resumes from DIR/ckpt.h5.
# SIGPIPE ignored (inherited by srun and scontrol): a Slurm or munge peer that closes its socket early
# then gives the client EPIPE, which it retries, instead of killing it (a test's sbatch died of SIGPIPE
# once in CI, under load).
trap '' PIPE
HPCLM_SIGNALLED=0
_hpclm_forward() { HPCLM_SIGNALLED=1; echo "[slurm] $1 received: forwarding to the job step"; kill -s "$1" "$HPCLM_STEP_PID" 2>/dev/null || true; }
trap '_hpclm_forward USR1' USR1
trap '_hpclm_forward TERM' TERM
step() {
  "$@" &
  HPCLM_STEP_PID=$!
  local rc
  while :; do
    rc=0; wait "$HPCLM_STEP_PID" || rc=$?
    kill -0 "$HPCLM_STEP_PID" 2>/dev/null && continue      # wait was cut short by a trapped signal
    if [ "$rc" -ne 0 ] && [ "$HPCLM_SIGNALLED" = 1 ]; then
      # The forwarded signal reached the tasks before hpclm's handlers (srun still starting them; seen
      # in CI: a requeued attempt got the time-limit USR1 one second after it started): nothing was
      # lost beyond that attempt, so it counts as stopped early (requeue_unless_finished decides).
      echo "[slurm] the step ended by the forwarded signal (exit $rc)"
      return 0
    fi
    return "$rc"
  done
}
requeue_unless_finished() {
  python jobscripts/slurm/run_finished.py "$1" && return 0
  echo "[slurm] the run stopped early (signalled: $HPCLM_SIGNALLED): requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  sleep 60 & wait $!   # Slurm ends this script as it requeues the job
  exit 0
}
echo "[slurm] job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}, restart count ${SLURM_RESTART_COUNT:-0}"
