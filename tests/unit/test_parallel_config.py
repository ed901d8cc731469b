"""The [parallel] section and the strategy seam from the command line (one process): bad layouts
and combinations give one clear line; a checkpoint resumes with another comm.bucket_mb (or says
why not); a ZeRO run's checkpoint is the ordinary one (`hpclm sample` reads it); renamed keys."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import assert_same_state, read_ckpt, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402
from hpclm.config import Config, config_from_json  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")


@pytest.mark.parametrize("sets, needle", [
    (["parallel.zero=4"], "parallel.zero must be 0, 1, 2 or 3"),
    (["parallel.zero=1", "compress.name=topk"], "ZeRO shards uncompressed gradients"),
    (["parallel.zero=2", "compress.onebit_adam=true", "compress.name=ef_sign"], "ZeRO shards uncompressed"),
    (["parallel.zero=1", "comm.algorithm=tree"], "parallel.zero needs comm.algorithm ring or mpi"),
    (["parallel.sync=gossip", "parallel.zero=1"], "parallel.sync=gossip averages whole models"),
    (["gossip.topology=hypercube"], "gossip.topology must be one of"),
    (["parallel.schedule=interleaved"], "parallel.schedule=interleaved needs parallel.chunks >= 2"),
    (["parallel.chunks=2"], "parallel.chunks=2 needs parallel.schedule=interleaved"),
    (["parallel.chunks=0"], "parallel.chunks must be >= 1"),
    (["parallel.pp=2", "parallel.schedule=interleaved", "parallel.chunks=2"],
     "parallel.pp (2) x parallel.chunks (2) is larger than model.n_layer (1)"),
    (["parallel.pp=2", "parallel.schedule=interleaved", "parallel.chunks=2", "model.n_layer=4",
      "parallel.micro_batches=3"], "needs parallel.micro_batches (3) to be a multiple of parallel.pp (2)"),
    (["parallel.pp=2", "parallel.schedule=interleaved", "parallel.chunks=2", "model.n_layer=4",
      "parallel.micro_batches=2", "parallel.stage_layers=2,2"], "each of the 4 stages (parallel.pp x parallel.chunks)"),
    (["parallel.pp=2", "parallel.zero=2"], "the pipeline combines with ZeRO-1 only"),
    (["parallel.pp=5"], "larger than model.n_layer"),
    (["parallel.tp=2"], "world size 1 is not divisible by tp*pp = 2*1"),
    (["parallel.tp=4"], "parallel.tp=4 must divide model.n_head=2"),
    (["parallel.tp=2", "parallel.pp=2", "model.n_layer=2"], "world size 1 is not divisible by tp*pp = 2*2"),
    (["parallel.dp=3"], "world size 1 != dp*tp*pp"),
    (["parallel.schedule=zigzag"], "parallel.schedule must be one of"),
    (["compress.rank=2"], "compress.rank is now called compress.powersgd_rank"),
    (["compress.exchange=vote", "compress.name=topk"], "compress.exchange=vote does not fit compressor 'topk'"),
])
def test_bad_parallel_input_is_one_line(tmp_path, capsys, cache, sets, needle):
    args = [w for s in sets for w in ("--set", s)]
    capsys.readouterr()
    rc = main(["train", "--out", str(tmp_path / "run")] + tiny_args(cache, *args))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("hpclm: error: ") and needle in lines[0], lines


def test_stored_config_with_old_key_loads():
    data = json.loads(Config().to_json())
    data["compress"]["rank"] = data["compress"].pop("powersgd_rank") + 3
    assert config_from_json(json.dumps(data)).compress.powersgd_rank == 7


def test_resume_with_other_bucket_size(tmp_path, capsys, cache):
    """Uncompressed: the gradient sync keeps no state, so any comm.bucket_mb resumes bit-exactly.
    With error feedback (state per bucket) another bucket size is refused with the reason."""
    straight, part = tmp_path / "straight", tmp_path / "part"
    small = ["--set", "comm.bucket_mb=0.005"]
    assert main(["train", "--out", str(straight)] + tiny_args(cache, *small, steps=4)) == 0
    assert main(["train", "--out", str(part)] + tiny_args(cache, *small, steps=2)) == 0
    assert main(["train", "--resume", str(part), "--set", "train.max_steps=4", "--set", "comm.bucket_mb=1"]) == 0
    assert_same_state(straight, part)
    topk = tmp_path / "topk"
    sets = ["--set", "compress.name=topk", "--set", "compress.density=0.05", *small]
    assert main(["train", "--out", str(topk)] + tiny_args(cache, *sets, steps=2)) == 0
    capsys.readouterr()
    rc = main(["train", "--resume", str(topk), "--set", "train.max_steps=4", "--set", "comm.bucket_mb=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "comm.bucket_mb" in err and "Traceback" not in err, err


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_single_process_equals_plain_and_samples(tmp_path, capsys, cache, stage):
    """One process: ZeRO's shard is everything, so its run equals the plain one (stage 1 bit for bit;
    at stages 2-3 the tied wte's two gradient contributions are summed in separate unit buffers, so
    to float64 round-off); its checkpoint is the ordinary format, which `hpclm sample` reads."""
    plain, zero = tmp_path / "plain", tmp_path / f"zero{stage}"
    common = ["--set", "train.dtype=float64", "--set", "comm.algorithm=ring"]
    assert main(["train", "--out", str(plain)] + tiny_args(cache, *common, steps=3)) == 0
    assert main(["train", "--out", str(zero)] + tiny_args(cache, *common, "--set", f"parallel.zero={stage}",
                                                          steps=3)) == 0
    if stage == 1:
        assert_same_state(plain, zero)
    else:
        (pa, oa, aa), (pb, ob, ab) = read_ckpt(plain), read_ckpt(zero)
        assert aa["step"] == ab["step"] and np.allclose(pa, pb, rtol=1e-12, atol=1e-14), np.abs(pa - pb).max()
        assert all(np.allclose(oa[k], ob[k], rtol=1e-10, atol=1e-14) for k in oa)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(zero), "--tokens", "5", "--prompt", "a"]) == 0
    assert len(capsys.readouterr().out) > 0
