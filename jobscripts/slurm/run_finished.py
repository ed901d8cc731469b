"""Exit 0 if the run in RUN_DIR has trained all its steps (checkpoint step == train.max_steps), else 1.

    python jobscripts/slurm/run_finished.py RUN_DIR

Used by the sbatch scripts after the training step: a step that ended early (SIGUSR1 before the
time limit, SIGTERM at pre-emption: hpclm checkpoints and exits 0 either way) leaves a checkpoint
short of max_steps, and the job requeues itself to resume from it.
"""
import json
import sys
from pathlib import Path

import h5py


def main(run_dir):
    path = Path(run_dir) / "ckpt.h5"
    if not path.is_file():
        return 1
    with h5py.File(path, "r") as f:
        step = int(f.attrs["step"])
        max_steps = int(json.loads(f.attrs["config_json"])["train"]["max_steps"])
    print(f"[slurm] {run_dir}: checkpoint at step {step} of {max_steps}")
    return 0 if step >= max_steps else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
