# Sourced by jobscripts/*.sbatch (from the submit directory): pre-emption and time-limit signals.
#   step srun hpclm train ...     # runs the step; a USR1/TERM to the batch shell is passed on to it
#   requeue_if_signalled          # after the step: requeue this job if a signal stopped it
# With `#SBATCH --signal=B:USR1@N` Slurm signals only the batch shell (N s before the time limit, or at
# pre-emption with SchedulerParameters=preempt_send_user_signal); bash runs a trap only between
# commands, so the step runs in the background and the trap forwards the signal to srun, which passes
# it to every task. hpclm train then checkpoints at the next step and exits 0; the requeued job
# (SLURM_RESTART_COUNT > 0) resumes from RUN_DIR/ckpt.h5.
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
    kill -0 "$HPCLM_STEP_PID" 2>/dev/null || return "$rc"   # else: wait was cut short by a trapped signal
  done
}
requeue_if_signalled() {
  [ "$HPCLM_SIGNALLED" = 1 ] || return 0
  echo "[slurm] checkpointed after a signal: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID" || true   # a pre-empted job is requeued by Slurm itself
  exit 0
}
echo "[slurm] job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NODELIST:-?}, restart count ${SLURM_RESTART_COUNT:-0}"
