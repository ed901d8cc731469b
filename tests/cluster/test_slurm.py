"""Every jobscripts/*.sbatch under a real local Slurm (jobscripts/slurm/local_slurm.sh), root only.

Jobs get tiny sizes through the knobs the scripts read (SETS, DATA=builtin, SIZES, ...). The
interruptions are real: a dp_shakespeare.sbatch job (--requeue) pre-empted by a job of partition
`urgent` (Slurm sends the ranks SIGTERM) checkpoints, requeues itself, restarts (SLURM_RESTART_COUNT=1)
and ends in the same state, bit for bit, as an uninterrupted run; one that gets its
--signal=B:USR1@N before the time limit forwards it to the ranks, checkpoints, requeues and resumes.
"""
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainutil import REPO, assert_same_state, env, mpiexec, summary, tiny_args  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a local Slurm needs root (apt-get, slurmctld, slurmd, munged)")
SCRIPT = REPO / "jobscripts" / "slurm" / "local_slurm.sh"


def sets(cache, steps, *extra):
    """SETS value for the sbatch scripts: the tiny training configuration of tests/trainutil.py."""
    args = tiny_args(cache, *extra, steps=steps)
    return " ".join(args[i + 1] for i in range(0, len(args), 2))


@pytest.fixture(scope="module")
def slurm():
    was_up = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True).stdout
    started = "slurmctld: running" not in was_up
    proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)


def job_env(**extra):
    e = env()
    e["PATH"] = str(Path(sys.executable).parent) + os.pathsep + e["PATH"]
    e.update({k: str(v) for k, v in extra.items()})
    return e


def slurm_command(cmd, **kwargs):
    """A Slurm client command with SIGPIPE left ignored (restore_signals=False keeps Python's SIG_IGN):
    a peer that closes its socket early then gives EPIPE, which libmunge and Slurm retry, instead of
    killing the client (seen once in CI: sbatch, under load, died of SIGPIPE with nothing printed)."""
    return subprocess.run(cmd, capture_output=True, text=True, restore_signals=False, **kwargs)


def job_with_comment(token):
    """Id of the job (any state) submitted with --comment=token, or None."""
    for line in slurm_command(["squeue", "-h", "-t", "all", "-o", "%i %k"]).stdout.splitlines():
        job, _, comment = line.partition(" ")
        if comment == token:
            return job
    return None


def sbatch(*args, wait=True, **knobs):
    """Submit; returns (job id, CompletedProcess). A submission without --wait that failed is tried
    again, up to three times in all, unless its job (found by a unique --comment) was made after all."""
    token = f"hpclm-test-{uuid.uuid4().hex}"
    cmd = ["sbatch", "--parsable", f"--comment={token}"] + (["--wait"] if wait else []) + list(args)
    for _ in range(1 if wait else 3):
        proc = slurm_command(cmd, cwd=REPO, env=job_env(**knobs), timeout=600)
        if proc.returncode == 0 or wait:
            return proc.stdout.strip().split(";")[0], proc
        time.sleep(2)
        job = job_with_comment(token)
        if job:
            return job, subprocess.CompletedProcess(cmd, 0, job, proc.stderr)
    return "", proc


def take_log(name):
    """Text of the log REPO/<name> (the scripts' convention: %x-%j.out, arrays %x-%A_%a.out), removed."""
    path = REPO / name
    assert path.is_file(), f"no log {name} in the submit directory"
    text = path.read_text()
    path.unlink()
    return text


def job_field(job, field):
    out = slurm_command(["scontrol", "show", "job", job]).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    return m.group(1) if m else None


def cancel(job):
    """scancel until the job is over (a job caught between attempts may otherwise be requeued again)."""
    for _ in range(60):
        slurm_command(["scancel", job])
        if job_field(job, "JobState") in ("CANCELLED", "COMPLETED", "FAILED", "TIMEOUT", None):
            return
        time.sleep(1)
    raise AssertionError(f"job {job} could not be cancelled")


def test_collectives_sbatch(slurm, tmp_path):
    out = tmp_path / "coll"
    job, proc = sbatch("--nodes=1", "--ntasks-per-node=2", "jobscripts/collectives.sbatch", OUT=out,
                       SIZES="4K,64K", ITERS=2, CAL_ITERS=2, OVERLAP_SIZE="64K")
    log = take_log(f"hpclm-collectives-{job}.out")
    assert proc.returncode == 0, log[-3000:]
    for name in ("calibration-n2.json", "allreduce-n2.txt", "allreduce-n2.json", "allreduce-n2.h5",
                 "overlap-n2.txt", "overlap-n2.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = json.loads((out / "allreduce-n2.json").read_text())["rows"]
    assert {r["algorithm"] for r in rows} >= {"mpi", "ring", "hierarchical"}


def test_job_array_runs_one_configuration_per_task(slurm, tmp_path):
    # %1: one task at a time. Two MPICH jobs started by srun at once on one node can collide in
    # MPI_Init (seen: "Message ... truncated" in the shared-memory set-up, then a hang); on a cluster
    # the tasks land on different nodes.
    job, proc = sbatch("--array=0-1%1", "--ntasks=2", "jobscripts/compression_sweep.sbatch", RUN_ROOT=tmp_path,
                       DATA="builtin", SETS=sets(tmp_path, 4), SWEEP="compress.name=none compress.name=fp16,train.seed=7")
    logs = [take_log(f"hpclm-sweep-{job}_{i}.out") for i in (0, 1)]
    assert proc.returncode == 0, logs
    for i, (name, seed) in enumerate([("none", 1337), ("fp16", 7)]):
        run = tmp_path / f"sweep-{job}" / str(i)
        assert summary(run)["end_step"] == 4
        with h5py.File(run / "ckpt.h5", "r") as f:
            cfg = json.loads(f.attrs["config_json"])
        assert cfg["compress"]["name"] == name and cfg["train"]["seed"] == seed
        assert f"array task {i}" in logs[i]


def train_reference(tmp, run, steps):
    """The same training as the Slurm job, uninterrupted, under plain mpiexec (a Popen)."""
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "hpclm.cli", "train", "--config",
           "jobscripts/configs/shakespeare_char.toml", "--out", str(run), "--set", "comm.algorithm=ring",
           *tiny_args(tmp, "--set", "data.path=", *FAST, steps=steps)]
    return subprocess.Popen(cmd, cwd=REPO, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


FAST = ("--set", "comm.check_every=50", "--set", "train.log_interval=10", "--set", "train.timing_flush=50")


def holds_within(predicate, timeout):
    end = time.time() + timeout
    while not predicate():
        if time.time() > end:
            return False
        time.sleep(0.2)
    return True


def wait_for(predicate, timeout, what):
    assert holds_within(predicate, timeout), f"{what} not within {timeout} s"


def wait_done(job, timeout, *others):
    """Wait until `job` (and `others`) completed; returns its restart count."""
    end = time.time() + timeout
    while any(job_field(j, "JobState") != "COMPLETED" for j in (job,) + others):
        state = job_field(job, "JobState")
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"), f"job {job} {state}"
        assert time.time() < end, f"job {job} still {state} after {timeout} s"
        time.sleep(0.5)
    return int(job_field(job, "Restarts"))


def test_preempted_job_checkpoints_requeues_and_resumes_to_the_same_state(slurm, tmp_path):
    """Also dp_shakespeare.sbatch's end-to-end test: outputs, log name, the hpclm analyze step.
    The tiny model trains ~1 ms a step on an idle core: 10,000 steps keep the job training for
    seconds after the urgent job is submitted (2,000 once ended before Slurm pre-empted it)."""
    steps = 10000
    run, ref = tmp_path / "preempted", tmp_path / "reference"
    job, proc = sbatch("--ntasks=2", "jobscripts/dp_shakespeare.sbatch", wait=False, RUN_DIR=run, DATA="builtin",
                       SETS=sets(tmp_path, steps, *FAST))
    assert proc.returncode == 0, proc.stderr
    log_path = REPO / f"hpclm-dp-shakespeare-{job}.out"
    failure = None
    try:
        wait_for(lambda: log_path.is_file() and re.search(r"step \d\d/", log_path.read_text()), 120, "training")
        urgent, proc = sbatch("--partition=urgent", "--ntasks=8", "--output=/dev/null", "--wrap", "sleep 1", wait=False)
        assert proc.returncode == 0, proc.stderr
        ref_proc = train_reference(tmp_path, ref, steps)
        restarts = wait_done(job, 300, urgent)
    except AssertionError as exc:                      # the job's log goes into the failure message
        failure = str(exc)
    finally:
        cancel(job)
        log = take_log(log_path.name) if log_path.exists() else ""
    assert failure is None, f"{failure}\n{log[-3000:]}"
    assert restarts == 1, log[-3000:]
    assert "signal received: checkpointing" in log and "the run stopped early (signalled: 0)" in log, log[-3000:]
    stopped = int(re.search(r"checkpointing at step (\d+)", log).group(1))
    assert 10 <= stopped < steps and f"resuming at step {stopped}" in log and "restart count 1" in log
    assert f"done: step {steps}" in log and "== preempted: 2 ranks" in log    # hpclm analyze ran
    out = ref_proc.communicate(timeout=600)[0]
    assert ref_proc.returncode == 0, out[-3000:]
    assert summary(run)["val_loss"] == summary(ref)["val_loss"]
    assert_same_state(run, ref)


def test_time_limit_signal_is_forwarded_checkpointed_requeued_and_resumed(slurm, tmp_path):
    """--time=2 --signal=B:USR1@60: slurmctld checks time limits every 30 s and sends the warning
    signal up to one period early, so USR1 reaches the batch shell 30-60 s after the start (with @90 it
    came 24 s in on an idle machine, and CI's slower start-ups got it before hpclm's handlers were set,
    attempt after attempt). The run is longer than any attempt;
    once the requeued attempt trains on from the checkpoint the job is cancelled (the final state
    after a resume is the pre-emption test's)."""
    run = tmp_path / "timelimit"
    job, proc = sbatch("--ntasks=2", "--time=2", "--signal=B:USR1@60", "jobscripts/dp_shakespeare.sbatch", wait=False,
                       RUN_DIR=run, DATA="builtin", SETS=sets(tmp_path, 10**7, *FAST))
    assert proc.returncode == 0, proc.stderr
    log_path = REPO / f"hpclm-dp-shakespeare-{job}.out"
    resumed = re.compile(r"resuming at step (\d+)(.*\n)+step (\d+)/")
    try:
        resumed_in_time = holds_within(lambda: log_path.is_file() and resumed.search(log_path.read_text()), 360)
    finally:
        cancel(job)
        log = take_log(log_path.name) if log_path.exists() else ""
    assert resumed_in_time, "no resumed attempt within 360 s:\n" + log[-3000:]
    assert "USR1 received: forwarding to the job step" in log and "the run stopped early (signalled: 1)" in log
    stopped = int(re.search(r"checkpointing at step (\d+)", log).group(1))
    m = resumed.search(log)
    assert int(m.group(1)) == stopped and int(m.group(3)) > stopped and "restart count 1" in log
