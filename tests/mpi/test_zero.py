"""ZeRO stages (hpclm.parallel.zero) under MPI: P ranks stepped by hpclm.train.train_step equal the
single-process run with the same global batch (float64, 1e-12 relative) for sgd, momentum and
adamw with gradient accumulation and clipping active; the bytes each rank holds equal the
closed forms (planned_memory), the bytes it sends per step equal the ring's counts; a checkpoint
written at one dp size resumes on another."""
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import comm as collectives
from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.parallel.build import build_strategy
from hpclm.parallel.memory import activation_bytes, peak_live_elements, planned_memory
from hpclm.parallel.zero import ShardPlan, read_ranges, unit_ranges
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (2, 3, 4)
VOCAB, BLOCK, SEED, STEPS, BATCH = 29, 16, 11, 3, 24
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)
STAGES = (1, 2, 3)


def config(stage, optim, grad_accum=2, dtype="float64", algorithm="ring"):
    cfg = Config(model=MODEL, optim=OptimConfig(name=optim, lr=1e-2, min_lr=1e-3, warmup_steps=1,
                                                decay_steps=STEPS, grad_clip=0.05, weight_decay=0.1))
    cfg.train.grad_accum, cfg.train.max_steps, cfg.train.batch_size, cfg.train.dtype = grad_accum, STEPS, BATCH, dtype
    cfg.comm.algorithm = algorithm
    cfg.parallel.zero = stage
    return cfg


def run(comm, cfg, steps=STEPS, strategy=None, model=None):
    """`steps` steps of train_step; comm None is the single process. Returns (model, strategy)."""
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    if model is None:
        model = GPT(MODEL, seed=SEED, dtype=cfg.train.dtype)
        strategy = build_strategy(cfg, comm, model)
    session = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                              sampler=BatchSampler(TOKENS, BLOCK, BATCH, SEED, rank=rank, world=size))
    start = getattr(strategy, "steps_done", 0)
    for step in range(start, start + steps):
        train_step(session, step)
    strategy.steps_done = start + steps
    return model, strategy


def full_params(world, strategy):
    """The whole flat parameter buffer (gathered through the checkpoint path), on every rank."""
    state = strategy.checkpoint()
    return world.bcast(None if state is None else (state.params, state.optim_state), root=0)


_REF = {}


def reference(optim, grad_accum=2):
    key = (optim, grad_accum)
    if key not in _REF:
        model, strategy = run(None, config(0, optim, grad_accum))
        _REF[key] = (model.flat.copy(), {k: v.copy() for k, v in strategy.optimizer.state.items()})
    return _REF[key]


def close(a, b, rtol=1e-12):
    return a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("optim", ["sgd", "momentum", "adamw"])
def test_equals_single_process(world, stage, optim):
    model, strategy = run(world, config(stage, optim))
    params, state = full_params(world, strategy)
    ref, ref_state = reference(optim)
    init = GPT(MODEL, seed=SEED, dtype="float64").flat
    assert_all(world, not np.allclose(params, init), "parameters did not move")
    assert_all(world, close(params, ref), f"stage {stage} {optim}: max |d| {np.abs(params - ref).max():.2e}")
    for name in ref_state:
        assert_all(world, close(state[name], ref_state[name]), f"optimizer {name} differs")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("overlap", [True, False])
def test_mpi_collectives_and_no_overlap(world, stage, overlap):
    """MPI's own Reduce_scatter / Allgatherv on the shard counts, overlapped or not, give the same."""
    cfg = config(stage, "adamw", algorithm="mpi")
    cfg.comm.overlap = overlap
    model, strategy = run(world, cfg)
    params, _ = full_params(world, strategy)
    ref, _ = reference("adamw")
    assert_all(world, close(params, ref), f"stage {stage} mpi: max |d| {np.abs(params - ref).max():.2e}")


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("overlap", [True, False])
def test_memory_equals_closed_form(world, stage, overlap):
    """Bytes held (from the arrays) = the plan (parallel.memory) = the paper's closed form for fp32
    AdamW up to shard rounding, plus the temporary unit buffers of stages 2-3; activations = the
    caches' closed form."""
    cfg = config(stage, "adamw", dtype="float32")
    cfg.comm.overlap = overlap
    model, strategy = run(world, cfg, steps=1)
    N, r, psi = world.Get_size(), world.Get_rank(), model.layout.size
    held = strategy.memory()
    live = peak_live_elements(model.units, model.layout, stage, overlap=cfg.comm.overlap and N > 1)
    planned = planned_memory(stage, model.layout, N, r, "adamw", 4, *live)
    lo, hi = ShardPlan(psi, N).shard(r)
    closed = {1: 8 * psi + 8 * (hi - lo), 2: 4 * psi + 12 * (hi - lo), 3: 16 * (hi - lo)}[stage] + 4 * sum(live)
    for kind in planned:
        assert_all(world, held[kind] == planned[kind], f"stage {stage} {kind}: held {held[kind]}, planned {planned[kind]}")
    assert_all(world, sum(planned.values()) == closed, f"plan {sum(planned.values())} vs closed form {closed}")
    assert_all(world, stage < 2 or sum(live) > 0, "no live unit buffers counted")
    paper = {1: 8 * psi + 8 * psi / N, 2: 4 * psi + 12 * psi / N, 3: 16 * psi / N}[stage] + 4 * sum(live)
    assert_all(world, abs(sum(planned.values()) - paper) <= 16, f"plan vs 16 Psi-style closed form {paper}")
    micro = BATCH // (N * cfg.train.grad_accum)
    acts = activation_bytes(MODEL, micro, BLOCK, 4)
    assert_all(world, held["activations"] == acts, f"activations {held['activations']} vs closed form {acts}")


@pytest.mark.parametrize("stage", STAGES)
def test_bytes_per_step(world, stage):
    """Bytes a rank sends in one step (one micro-batch) = the ring's counts of every reduce-scatter
    and all-gather (a range of n elements: n minus one rank's piece), within 5 % of the closed forms
    2 (N-1)/N 8 Psi (stages 1-2: the all-reduce's volume) and 1.5 times that (stage 3, the tied
    head's embedding range counted with each of its uses)."""
    cfg = config(stage, "adamw", grad_accum=1)
    model, strategy = run(world, cfg, steps=1)
    collectives.counters.reset()
    run(world, cfg, steps=1, strategy=strategy, model=model)
    sent = collectives.counters.by_group()["world"]["bytes_sent"]
    N, r, psi = world.Get_size(), world.Get_rank(), model.layout.size
    plan = ShardPlan(psi, N)
    ranges = {u: (lo, hi) for u, lo, hi in unit_ranges(model.layout)}
    rs = lambda lo, hi: (hi - lo) - plan.counts(lo, hi)[r]                 # noqa: E731  ring reduce-scatter
    ag = lambda lo, hi: (hi - lo) - plan.counts(lo, hi)[(r + 1) % N]       # noqa: E731  ring all-gather
    if stage == 1:
        expect = sum(rs(lo, hi) for lo, hi in ranges.values()) + ag(0, psi)
    else:
        reads = [span for unit in model.units for span in read_ranges(unit, ranges)]
        expect = sum(rs(*span) for span in reads) + (ag(0, psi) if stage == 2 else 2 * sum(ag(*s) for s in reads))
    expect *= 8
    emb = ranges["embedding"][1] - ranges["embedding"][0]
    closed = 2 * (N - 1) / N * 8 * (psi if stage < 3 else 1.5 * (psi + emb))
    if stage == 2:
        closed = (N - 1) / N * 8 * (2 * psi + emb)           # the tied head's wte gradient is a second range
    assert_all(world, sent == expect, f"sent {sent} B, ring counts give {expect}")
    assert_all(world, abs(sent - closed) / closed < 0.05, f"sent {sent} B vs closed form {closed:.0f}")
