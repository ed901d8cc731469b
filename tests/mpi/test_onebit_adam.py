"""1-bit Adam (hpclm.parallel.onebit_adam.OneBitAdam) against a NumPy simulation: every rank regenerates every
rank's gradients from a seed, runs the warm-up as uncompressed AdamW on the mean gradient and the
compressed steps as per-rank momentum updates averaged by parallel.onebit.simulate (worker and
server error buffers), and checks the distributed parameters, momentum and error buffers against
it; a training run stopped and resumed after the warm-up reproduces the uninterrupted one."""
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from conftest import assert_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import read_ckpt, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402
from hpclm.config import Config  # noqa: E402
from hpclm.optim import AdamW  # noqa: E402
from hpclm.parallel.onebit import padded_size, simulate  # noqa: E402
from hpclm.parallel.buckets import AllReduceSync  # noqa: E402
from hpclm.parallel.onebit_adam import OneBitAdam  # noqa: E402
from hpclm.timing.reader import read_run  # noqa: E402

MPI_SIZES = (2, 3)
N, WARMUP, STEPS = 203, 2, 6           # 203 elements in two buckets (bucket_mb below), 4 compressed steps


def config():
    cfg = Config()
    cfg.compress.name, cfg.compress.onebit_adam, cfg.compress.warmup_steps = "ef_sign", True, WARMUP
    cfg.optim.freeze_variance_step, cfg.optim.weight_decay = WARMUP, 0.1
    cfg.optim.grad_clip = 0.0                                               # the reference does not clip
    cfg.comm.bucket_mb, cfg.comm.overlap = 120 * 8 / (1 << 20), False        # buckets of 120 float64
    return cfg.validate()


def grads_of(rank, step):
    return np.random.default_rng([rank, step]).standard_normal(N).astype(np.float64)   # (N,)


def test_matches_simulation(world):
    P, rank, cfg = world.Get_size(), world.Get_rank(), config()
    mask = (np.arange(N) % 3 != 0).astype(np.float64)                    # some coordinates not decayed
    params = np.linspace(-1, 1, N)
    grad_flat = np.zeros(N)
    opt = AdamW(cfg.optim, N, np.float64, mask)
    sync = AllReduceSync(world, grad_flat, cfg.comm)
    strategy = OneBitAdam(SimpleNamespace(flat=params, grad_flat=grad_flat), opt, sync, cfg.optim, WARMUP)
    buckets = sync.buckets
    assert_all(world, len(buckets) == 2, f"buckets {buckets}")

    ref_params, ref = params.copy(), AdamW(cfg.optim, N, np.float64, mask)
    errors = {}                                                          # per bucket: worker, server errors
    for lo, hi in buckets:
        n_pad = padded_size(hi - lo, P)
        errors[lo] = ([np.zeros(n_pad) for _ in range(P)], [np.zeros(n_pad // P) for _ in range(P)])
    for step in range(STEPS):
        lr = 1e-2
        grad_flat[...] = grads_of(rank, step)
        strategy.step(lr)

        every = [grads_of(r, step) for r in range(P)]
        if step < WARMUP:
            ref.step(ref_params, np.mean(every, axis=0), lr)
        else:
            m_old = ref.state["exp_avg"].copy()
            b1 = cfg.optim.beta1
            ref.t += 1
            ref.decay(ref_params, lr)
            ref.update_moments(every[rank])
            m = ref.state["exp_avg"]
            for lo, hi in buckets:
                local = [b1 * m_old[lo:hi] + (1 - b1) * g[lo:hi] for g in every]
                m[lo:hi] = simulate(local, *errors[lo])
            ref.apply_moments(ref_params, lr)
        gap = np.max(np.abs(params - ref_params))
        assert_all(world, gap < 1e-12, f"step {step}: params differ from the simulation by {gap:.2e}")
    m_gap = np.max(np.abs(opt.state["exp_avg"] - ref.state["exp_avg"]))
    assert_all(world, m_gap < 1e-12, f"momentum differs by {m_gap:.2e}")
    for comp, (lo, hi) in zip(strategy.codecs, buckets):
        workers, servers = errors[lo]
        ok = np.allclose(comp.worker_error, workers[rank], atol=1e-12) and \
            np.allclose(comp.server_error, servers[rank], atol=1e-12)
        assert_all(world, ok and np.any(comp.worker_error != 0), f"error buffers of bucket {lo}:{hi} differ")
    v_frozen = opt.state["exp_avg_sq"].copy()
    grad_flat[...] = grads_of(rank, STEPS)
    strategy.step(1e-2)
    assert_all(world, np.array_equal(v_frozen, opt.state["exp_avg_sq"]), "v changed after the freeze")
    everywhere = world.allgather(params)
    assert_all(world, all(np.array_equal(p, everywhere[0]) for p in everywhere), "ranks diverged")


def test_train_resume_after_warmup(world):
    root = Path(world.bcast(tempfile.mkdtemp(prefix="hpclm-onebit-adam-") if world.Get_rank() == 0 else None))
    sets = ["--set", "compress.name=ef_sign", "--set", "compress.onebit_adam=true",
            "--set", "compress.warmup_steps=1", "--set", "optim.freeze_variance_step=1",
            "--set", "comm.bucket_mb=0.005", "--set", f"train.batch_size={2 * world.Get_size()}"]
    args = lambda steps: tiny_args(root / "cache", *sets, steps=steps)  # noqa: E731
    rc = main(["train", "--out", str(root / "straight")] + args(5))
    assert_all(world, rc == 0, f"straight run rc {rc}")
    rc = main(["train", "--out", str(root / "part")] + args(3))
    assert_all(world, rc == 0, f"first part rc {rc}")
    rc = main(["train", "--resume", str(root / "part"), "--set", "train.max_steps=5"])
    assert_all(world, rc == 0, f"resume rc {rc}")
    ok = True
    if world.Get_rank() == 0:
        (pa, oa, _), (pb, ob, _) = read_ckpt(root / "straight"), read_ckpt(root / "part")
        ok = np.array_equal(pa, pb) and all(np.array_equal(oa[k], ob[k]) for k in oa)
        times = read_run(root / "straight").times          # (steps, ranks) per region
        ok = ok and np.all(times["compress"][1:] > 0) and np.all(times["comm"][1:] > 0) \
            and np.all(times["optimizer"] > 0) and np.all(times["compress"][0] == 0)
    assert_all(world, ok, "the resumed run differs from the straight one, or the regions are not "
                          "compress/comm after the warm-up with a positive optimizer region")


def test_bad_config_is_one_clear_error(world, capsys):
    root = Path(world.bcast(tempfile.mkdtemp(prefix="hpclm-onebit-adam-") if world.Get_rank() == 0 else None))
    sets = ["--set", "compress.name=ef_sign", "--set", "compress.onebit_adam=true",
            "--set", "compress.warmup_steps=1", "--set", "optim.freeze_variance_step=2",
            "--set", f"train.batch_size={2 * world.Get_size()}"]
    rc = main(["train", "--out", str(root / "bad")] + tiny_args(root / "cache", *sets, steps=2))
    out = capsys.readouterr()
    text = out.out + out.err
    assert_all(world, rc != 0, "a freeze step after the warm-up was accepted")
    clear = world.Get_rank() != 0 or ("freeze_variance_step" in text and "Traceback" not in text)
    assert_all(world, clear, text[-2000:])            # rank 0 prints the error
