"""parallel.sync = local from the command line (one process): bad [local] values and unsupported
combinations give one `hpclm: error:` line and exit 2; the synchronisation schedule (post-local
SGD's warm-up, then every H steps); a one-process DiLoCo run trains and `hpclm sample` reads its
checkpoint."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import env, read_ckpt, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402
from hpclm.parallel.local import last_sync  # noqa: E402

LOCAL = ["--set", "parallel.sync=local"]


@pytest.mark.parametrize("sets, needle", [
    (["local.steps=0"], "local.steps must be >= 1, got 0"),
    (["local.warmup_steps=-1"], "local.warmup_steps must be >= 0"),
    (["local.outer=mean"], "local.outer must be average or diloco"),
    (["local.outer_lr=0"], "local.outer_lr must be > 0"),
    (["local.outer_momentum=1"], "local.outer_momentum must be in [0, 1)"),
    (["parallel.zero=1"], "parallel.sync=local does not run with parallel.zero"),
    (["parallel.pp=2", "model.n_layer=2"], "parallel.sync=local does not run with parallel.pp > 1"),
    (["parallel.tp=2"], "parallel.sync=local does not run with parallel.tp > 1"),
    (["compress.onebit_adam=true", "compress.name=ef_sign"], "does not run with compress.onebit_adam"),
    (["compress.name=topk"], "compresses DiLoCo's pseudo-gradient only"),
    (["local.outer=diloco", "compress.name=topk", "compress.warmup_steps=2"], "compress.warmup_steps"),
    (["local.outer=diloco", "compress.name=powersgd"], "no per-bucket exchange carries"),
])
def test_bad_local_input_is_one_line(tmp_path, capsys, cache, sets, needle):
    args = LOCAL + [w for s in sets for w in ("--set", s)]
    capsys.readouterr()
    rc = main(["train", "--out", str(tmp_path / "run")] + tiny_args(cache, *args))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("hpclm: error: ") and needle in lines[0], lines


def test_local_steps_zero_exits_2_without_traceback(tmp_path, cache):
    cmd = [sys.executable, "-m", "hpclm.cli", "train", "--out", str(tmp_path / "r")] + \
        tiny_args(cache, *LOCAL, "--set", "local.steps=0")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == ["hpclm: error: local.steps must be >= 1, got 0"]


@pytest.mark.parametrize("steps, warmup, expected", [
    (4, 0, [0, 0, 0, 4, 4, 4, 4, 8, 8]),       # t = 1..9: synchronised at 4 and 8
    (4, 3, [1, 2, 3, 4, 4, 4, 4, 8, 8]),       # every step for the first 3, then every 4th
    (4, 6, [1, 2, 3, 4, 5, 6, 6, 8, 8]),
    (1, 0, [1, 2, 3, 4, 5, 6, 7, 8, 9]),
])
def test_last_sync_schedule(steps, warmup, expected):
    assert [last_sync(t, steps, warmup) for t in range(1, 10)] == expected


def test_one_process_diloco_trains_and_samples(tmp_path, cache):
    run = tmp_path / "run"
    sets = LOCAL + ["--set", "local.outer=diloco", "--set", "local.steps=2", "--set", "compress.name=topk"]
    assert main(["train", "--out", str(run)] + tiny_args(cache, *sets, steps=5)) == 0
    params, optim, attrs = read_ckpt(run)
    assert attrs["step"] == 5 and np.all(np.isfinite(params)) and "exp_avg" in optim
    assert main(["sample", "--checkpoint", str(run), "--tokens", "8"]) == 0
