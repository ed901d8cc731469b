"""The GPU check's parts that run without a GPU (jobscripts/gpu_check.sh is run on a lent GPU machine;
its full CPU dry run, DEVICE=cpu, takes minutes): the script parses, and its comparisons work and
can fail: the model comparison on the CPU, a run compared with itself and with a different run, and
the top-k comparison's set check."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPARE = [sys.executable, str(ROOT / "jobscripts" / "gpu_compare.py")]


def test_script_parses():
    for name in ("gpu_check.sh", "gpu_prepare.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "jobscripts" / name)], check=True)


def test_model_comparison_on_the_cpu():
    out = subprocess.run(COMPARE + ["model", "--device", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "PASS" in out.stdout


def test_topk_comparison_on_the_cpu():
    out = subprocess.run(COMPARE + ["topk", "--device", "cpu", "--n", "20000"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and "same set: True" in out.stdout


def test_runs_comparison_tells_runs_apart(tmp_path):
    def train(name, seed):
        subprocess.run([sys.executable, "-c", "import sys; from hpclm.cli import main; sys.exit(main())", "train",
                        "--set", "train.max_steps=3", "--set", "train.eval_interval=0", "--set", "train.log_interval=1",
                        "--set", "model.n_layer=1", "--set", "model.n_embd=32", "--set", "model.n_head=2",
                        "--set", "model.block_size=16", "--set", "train.batch_size=2", "--set", f"train.seed={seed}",
                        "--out", str(tmp_path / name)], check=True, capture_output=True, cwd=ROOT)
    train("a", 1)
    train("b", 2)
    same = subprocess.run(COMPARE + ["runs", str(tmp_path / "a"), str(tmp_path / "a"), "--steps", "3"],
                          capture_output=True, text=True)
    other = subprocess.run(COMPARE + ["runs", str(tmp_path / "a"), str(tmp_path / "b"), "--steps", "3"],
                           capture_output=True, text=True)
    assert same.returncode == 0 and "PASS" in same.stdout
    assert other.returncode == 1 and "FAIL" in other.stdout
