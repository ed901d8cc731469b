"""Parameter servers (hpclm.parallel.ps) under MPI: S servers and W = P - S workers stepped by
hpclm.train.train_step. Sync PS equals the single-process run with the same global batch
(float64 round-off) for S = 1, 2 and W = 1..3 (clipping active); ssp with s = 0 equals sync bit
for bit; a checkpoint gathered from the shards resumes sync bit-exactly; async applies every push
exactly once, its staleness histogram matches a schedule the test forces, and a 10x slower worker
does not deadlock it; ssp never lets a worker run more than s steps ahead; a world or batch that
does not fit is refused on every rank."""
import json
import os
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import checkpoint as ckpt_io
from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.parallel.build import build_strategy
from hpclm.parallel.ps import serve, split_world
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (3, 4)
VOCAB, BLOCK, SEED, STEPS, BATCH = 29, 16, 11, 4, 12
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)


def config(out_dir, optim="adamw", mode="sync", servers=1, staleness=0, sync="ps", pull_dtype="float32",
           compressor="none"):
    cfg = Config(model=MODEL, optim=OptimConfig(name=optim, lr=1e-2, min_lr=1e-3, warmup_steps=1,
                                                decay_steps=STEPS, grad_clip=0.05, weight_decay=0.1))
    cfg.train.grad_accum, cfg.train.max_steps, cfg.train.batch_size, cfg.train.dtype = 2, STEPS, BATCH, "float64"
    cfg.train.out_dir = out_dir
    cfg.parallel.sync = sync
    cfg.ps.servers, cfg.ps.mode, cfg.ps.staleness, cfg.ps.pull_dtype = servers, mode, staleness, pull_dtype
    cfg.compress.name = compressor
    cfg.comm.bucket_mb = 64.0                     # one bucket: an all-reduce run compresses the whole gradient at once
    return cfg


@pytest.fixture
def out_dir(world):
    path = tempfile.mkdtemp(prefix="hpclm-ps-") if world.Get_rank() == 0 else None
    return world.bcast(path, root=0)


def train(strategy, model, cfg, comm, steps, start=0, before_step=None):
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    session = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                              sampler=BatchSampler(TOKENS, BLOCK, BATCH, SEED, rank=rank, world=size))
    for step in range(start, start + steps):
        if before_step is not None:
            before_step(step)
        train_step(session, step)


def reference(cfg, steps=STEPS):
    """(params, optimizer state) of the single-process all-reduce run with the same global batch."""
    ref_cfg = config(cfg.train.out_dir, cfg.optim.name, sync="allreduce")
    model = GPT(MODEL, seed=SEED, dtype="float64")
    strategy = build_strategy(ref_cfg, None, model)
    train(strategy, model, ref_cfg, None, steps)
    return model.flat.copy(), {k: v.copy() for k, v in strategy.optimizer.state.items()}


def run_ps(world, cfg, steps=STEPS, start=0, resume=None, seed=SEED):
    """Servers serve, workers train; returns (roles, the checkpoint state on worker 0 else None,
    the servers' reports (on every rank), the worker's strategy or None)."""
    roles = split_world(world, cfg)
    model = GPT(MODEL, seed=seed, dtype="float64")
    state = strategy = report = None
    if roles.is_server:
        report = serve(roles, cfg, model)
    else:
        group = roles.workers_comm
        strategy = build_strategy(cfg, group, model, ps_roles=roles)
        if resume is not None:
            strategy.restore(resume, start)
        train(strategy, model, cfg, group, steps, start=start)
        state = strategy.checkpoint()
        strategy.close()
    reports = [r for r in world.allgather(report) if r is not None]
    return roles, state, [json.load(open(p)) for p in reports], strategy


def worker0_state(world, state):
    """The gathered checkpoint state of worker 0 (world rank 0), on every rank."""
    return world.bcast(None if state is None else (state.params, state.optim_state), root=0)


@pytest.mark.parametrize("servers", [1, 2])
@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_sync_equals_single_process(world, out_dir, servers, optim):
    cfg = config(out_dir, optim, servers=servers)
    roles, state, reports, _ = run_ps(world, cfg)
    params, optim_state = worker0_state(world, state)
    ref, ref_state = reference(cfg)
    init = GPT(MODEL, seed=SEED, dtype="float64").flat
    ok = np.allclose(params, ref, rtol=1e-10, atol=1e-13) and not np.allclose(params, init)
    ok = ok and all(np.allclose(optim_state[k], ref_state[k], rtol=1e-9, atol=1e-15) for k in ref_state)
    ok = ok and optim_state["t"] == STEPS
    assert_all(world, ok, f"S={servers} W={roles.workers}: max |ps - ref| = {np.abs(params - ref).max():.3e}")
    assert_all(world, len(reports) == servers and all(r["updates"] == STEPS and
                                                      r["pushes_applied"] == STEPS * roles.workers and
                                                      r["staleness_histogram"] == {"0": STEPS * roles.workers}
                                                      for r in reports), reports)


def test_ssp_with_staleness_zero_equals_sync(world, out_dir):
    _, sync_state, _, _ = run_ps(world, config(out_dir, mode="sync", servers=world.Get_size() - 2))
    _, ssp_state, _, _ = run_ps(world, config(out_dir, mode="ssp", staleness=0, servers=world.Get_size() - 2))
    a, b = worker0_state(world, sync_state), worker0_state(world, ssp_state)
    assert_all(world, np.array_equal(a[0], b[0]) and all(np.array_equal(a[1][k], b[1][k]) for k in a[1] if k != "t"),
               "ssp s=0 differs from sync")


def test_compressed_pushes_with_error_feedback_equal_compressed_all_reduce(world, out_dir):
    """S = 1: each worker compresses its whole gradient (topk, error feedback at the worker), the
    server decompresses and averages: what the all-reduce strategy's compressed exchange does
    over the same workers."""
    cfg = config(out_dir, compressor="topk")
    roles, state, (report,), strategy = run_ps(world, cfg)
    params = worker0_state(world, state)[0]
    ref = None
    if not roles.is_server:
        model = GPT(MODEL, seed=SEED, dtype="float64")
        dp_cfg = config(out_dir, sync="allreduce", compressor="topk")
        dp = build_strategy(dp_cfg, roles.workers_comm, model)
        train(dp, model, dp_cfg, roles.workers_comm, STEPS)
        ref = model.flat.copy()
    ref = world.bcast(ref, root=0)
    n = ref.size
    assert_all(world, np.allclose(params, ref, rtol=1e-10, atol=1e-13), np.abs(params - ref).max())
    # Pushed bytes: the compressed payloads, a fraction of W * STEPS full gradients.
    assert_all(world, report["bytes_recv"] < 0.5 * roles.workers * STEPS * 8 * n, report["bytes_recv"])


def test_float16_pull(world, out_dir):
    cfg = config(out_dir, pull_dtype="float16")
    roles, state, (report,), strategy = run_ps(world, cfg)
    params = worker0_state(world, state)[0]
    ok = True
    if not roles.is_server:
        ok = np.array_equal(strategy.model.flat, params.astype(np.float16).astype(np.float64))
    W, n = roles.workers, params.size
    # Sent by the server: per push a float16 shard and a 24-byte reply; then one checkpoint's float64 state.
    sent_pulls = report["bytes_sent"] - (3 * 8 * n + 8)
    assert_all(world, ok and sent_pulls == W * STEPS * (2 * n + 24), (ok, sent_pulls, W * STEPS * (2 * n + 24)))


def test_sync_checkpoint_resumes_bit_exactly(world, out_dir):
    cfg = config(out_dir, servers=1)
    _, straight, _, _ = run_ps(world, cfg, steps=STEPS)
    _, half, _, _ = run_ps(world, cfg, steps=STEPS // 2)
    path = os.path.join(out_dir, "ckpt.h5")
    if world.Get_rank() == 0:
        ckpt_io.save(path, params=half.params, layout=GPT(MODEL, seed=SEED, dtype="float64").layout,
                     optim_state=half.optim_state, step=STEPS // 2, config_json=cfg.to_json(), tokenizer_json="{}",
                     rng_state=[], extra=half.extra)
    world.Barrier()
    # A fresh start from other initial parameters: everything must come from the checkpoint.
    _, resumed, _, _ = run_ps(world, cfg, steps=STEPS - STEPS // 2, start=STEPS // 2,
                              resume=ckpt_io.Checkpoint(path), seed=SEED + 1)
    a, b = worker0_state(world, straight), worker0_state(world, resumed)
    assert_all(world, np.array_equal(a[0], b[0]) and all(np.array_equal(a[1][k], b[1][k]) for k in a[1] if k != "t")
               and a[1]["t"] == b[1]["t"] == STEPS, "resumed sync run differs from the straight one")


def run_workers_apart(world, cfg, before_step=None, after_run=None):
    """run_ps with worker hooks before_step(group, rank, W, step) and after_run(group, rank, W)
    (group: the workers' communicator). Returns (roles, the servers' reports)."""
    roles = split_world(world, cfg)
    model = GPT(MODEL, seed=SEED, dtype="float64")
    report = None
    if roles.is_server:
        report = serve(roles, cfg, model)
    else:
        group = roles.workers_comm
        rank, W = group.Get_rank(), group.Get_size()
        strategy = build_strategy(cfg, group, model, ps_roles=roles)
        train(strategy, model, cfg, group, STEPS, before_step=lambda step: before_step(group, rank, W, step))
        after_run(group, rank, W)
        strategy.checkpoint()
        strategy.close()
    reports = [r for r in world.allgather(report) if r is not None]
    return roles, [json.load(open(p)) for p in reports]


def pushes_once(report, W):
    return sorted(tuple(a[:2]) for a in report["applied"]) == [(s, w) for s in range(STEPS) for w in range(W)]


def test_async_applies_every_push_once_with_the_forced_staleness(world, out_dir):
    """Worker w starts only when worker w-1 has done all its steps (a token passed along): its
    first push misses the w * STEPS updates applied since it read version 0; all others see none."""
    def wait_for_token(group, rank, W, step):
        if step == 0 and rank > 0:
            group.recv(source=rank - 1, tag=9)

    def pass_token(group, rank, W):
        if rank < W - 1:
            group.send("done", dest=rank + 1, tag=9)

    roles, (report,) = run_workers_apart(world, config(out_dir, mode="async"), wait_for_token, pass_token)
    W = roles.workers
    expected = {"0": W * STEPS - (W - 1), **{str(w * STEPS): 1 for w in range(1, W)}}
    assert_all(world, report["pushes_applied"] == report["updates"] == W * STEPS and pushes_once(report, W), report)
    assert_all(world, report["staleness_histogram"] == expected, (report["staleness_histogram"], expected))


def test_async_does_not_wait_for_a_10x_slower_worker(world, out_dir):
    def slow_last(group, rank, W, step):
        if rank == W - 1:
            time.sleep(0.2)

    roles, (report,) = run_workers_apart(world, config(out_dir, mode="async"), slow_last, lambda *a: None)
    W = roles.workers
    assert_all(world, report["pushes_applied"] == W * STEPS and pushes_once(report, W), report)
    # The fast workers' pushes went in while the slow one slept: its own pushes are stale.
    slow = [s for _, w, s in report["applied"] if w == W - 1]
    assert_all(world, max(slow) > 0, report["applied"])


def test_ssp_keeps_every_worker_within_the_staleness_bound(world, out_dir):
    def slow_last(group, rank, W, step):
        if rank == W - 1:
            time.sleep(0.2)

    roles, (report,) = run_workers_apart(world, config(out_dir, mode="ssp", staleness=1), slow_last,
                                         lambda *a: None)
    W = roles.workers
    staleness = [s for _, _, s in report["applied"]]
    assert_all(world, report["updates"] == STEPS and pushes_once(report, W), report)
    assert_all(world, max(staleness) == 1, report["staleness_histogram"])


def test_a_world_or_batch_that_does_not_fit_is_refused(world, out_dir):
    P = world.Get_size()
    with pytest.raises(UserError, match=rf"ps.servers \({P}\) must be smaller than the world size"):
        split_world(world, config(out_dir, servers=P))
    cfg = config(out_dir, servers=1)
    cfg.train.batch_size = 2 * (P - 1) + 1
    with pytest.raises(UserError, match="must be divisible by the number of parameter-server workers"):
        split_world(world, cfg)
