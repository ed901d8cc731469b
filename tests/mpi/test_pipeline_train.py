"""Pipeline parallelism in the training step (parallel.pp > 1, hpclm.parallel.pipeline_optimizer):
every layout dp x pp of the world, gpipe and 1f1b, stepped by hpclm.train.train_step, follows the
single-process trajectory with the same global batch (float64, 1e-12); the checkpoint is the
single-process one and resumes on another layout; bad layouts give one clear error."""
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import comm as collectives
from hpclm.cli import main
from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.model.stage import StageModel
from hpclm.parallel.build import build_strategy, stage_ranges
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (2, 4)
VOCAB, BLOCK, SEED, STEPS, BATCH = 29, 16, 11, 3, 16
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=4, n_head=2, n_embd=16)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)


def config(pp, schedule="1f1b", micro=2, stage_layers="", recompute="none", zero=0):
    cfg = Config(model=MODEL, optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1, decay_steps=STEPS,
                                                grad_clip=0.5))
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.dtype = STEPS, BATCH, "float64"
    cfg.parallel.pp, cfg.parallel.schedule, cfg.parallel.micro_batches = pp, schedule, micro
    cfg.parallel.stage_layers, cfg.parallel.recompute, cfg.parallel.zero = stage_layers, recompute, zero
    return cfg.validate()


def run(world, cfg, with_state=False):
    """STEPS train_steps on this rank's part of the layout; the full parameters (checkpoint path)
    and the losses (and the whole CheckpointState if with_state)."""
    groups = collectives.Groups.build(world, pp=cfg.parallel.pp) if world is not None else None
    if groups is None:
        model = GPT(MODEL, seed=SEED, dtype="float64")
        strategy, rank, size = build_strategy(cfg, None, model), 0, 1
    else:
        first, stop = stage_ranges(cfg)[groups.pp.Get_rank()]
        model = StageModel(MODEL, first, stop, seed=SEED, dtype="float64")
        model.recompute = cfg.parallel.recompute == "block"
        strategy = build_strategy(cfg, groups.dp, model, pp_group=groups.pp)
        rank, size = groups.dp.Get_rank(), groups.dp.Get_size()
    session = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                              sampler=BatchSampler(TOKENS, BLOCK, BATCH, SEED, rank=rank, world=size))
    losses = [train_step(session, step)[0] for step in range(STEPS)]
    if groups is not None:                                   # each dp rank's loss is of its own rows
        losses = [groups.dp.allreduce(loss) / size for loss in losses]
    state = strategy.checkpoint()
    if groups is not None:
        state = world.bcast(None if state is None else state, root=0)
        strategy.engine.free()
        groups.free()
    return (state.params, losses, state) if with_state else (state.params, losses)


_REF = {}


def reference():
    if "ref" not in _REF:
        _REF["ref"] = run(None, config(1, micro=1), with_state=True)
    return _REF["ref"][:2]


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("micro", [1, 2, 4])
def test_every_layout_equals_single_process(world, schedule, micro):
    P = world.Get_size()
    ref, ref_losses = reference()
    for pp in [d for d in (2, 4) if P % d == 0 and d <= MODEL.n_layer]:
        params, losses = run(world, config(pp, schedule, micro))
        assert_all(world, np.allclose(params, ref, rtol=1e-12, atol=1e-14),
                   f"dp {P // pp} x pp {pp} {schedule} m={micro}: max |d| {np.abs(params - ref).max():.2e}")
        assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_recompute_follows_the_single_process_trajectory(world, schedule):
    ref, ref_losses = reference()
    P = world.Get_size()
    params, losses = run(world, config(P, schedule, micro=4, recompute="block"))
    assert_all(world, np.allclose(params, ref, rtol=1e-12, atol=1e-14),
               f"pp {P} {schedule} recompute: max |d| {np.abs(params - ref).max():.2e}")
    assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_zero1_on_the_dp_group_of_a_pipeline_equals_single_process(world, schedule):
    """dp x pp = 2 x 2 at P = 4 (1 x 2 at P = 2): ZeRO-1 shards each stage's AdamW state over its dp
    group; parameters, losses and the gathered optimizer state are the single-process ones."""
    reference()
    ref, ref_losses, ref_state = _REF["ref"]
    params, losses, state = run(world, config(2, schedule, micro=2, zero=1), with_state=True)
    assert_all(world, np.allclose(params, ref, rtol=1e-12, atol=1e-14),
               f"zero-1 dp {world.Get_size() // 2} x pp 2 {schedule}: max |d| {np.abs(params - ref).max():.2e}")
    assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")
    moments = [k for k in ref_state.optim_state if k != "t"]
    assert_all(world, moments and all(np.allclose(state.optim_state[k], ref_state.optim_state[k], rtol=1e-10,
                                                  atol=1e-16) for k in moments), "gathered optimizer state")
    assert_all(world, state.optim_state["t"] == ref_state.optim_state["t"] == STEPS, "optimizer step count")


def test_zero1_pipeline_restores_its_shards_from_a_single_process_checkpoint(world):
    """restore() hands each stage and dp rank its slice of a single-process checkpoint; checkpoint()
    gathers exactly that back."""
    reference()
    ref, _, ref_state = _REF["ref"]
    cfg = config(2, zero=1)
    groups = collectives.Groups.build(world, pp=2)
    first, stop = stage_ranges(cfg)[groups.pp.Get_rank()]
    model = StageModel(MODEL, first, stop, seed=SEED + 1, dtype="float64")     # other initial values
    strategy = build_strategy(cfg, groups.dp, model, pp_group=groups.pp)
    optim = {k: v for k, v in ref_state.optim_state.items() if k != "t"}
    ckpt = SimpleNamespace(params=ref, optim=optim, optim_t=ref_state.optim_state["t"], path="ref",
                           check_layout=lambda layout: None)
    strategy.restore(ckpt, STEPS)
    state = world.bcast(strategy.checkpoint(), root=0)
    strategy.engine.free()
    groups.free()
    assert_all(world, np.array_equal(state.params, ref) and state.optim_state["t"] == STEPS
               and all(np.array_equal(state.optim_state[k], v) for k, v in optim.items()), "restore -> checkpoint")


def test_explicit_stage_layers(world):
    ref, _ = reference()
    P = world.Get_size()
    layers = "3,1" if P == 2 else "1,1,1,1"
    params, _ = run(world, config(P, stage_layers=layers))
    assert_all(world, np.allclose(params, ref, rtol=1e-12, atol=1e-14), f"stage_layers {layers}")


def test_cli_train_resume_on_another_layout_and_bad_input(world, capsys):
    root = Path(world.bcast(tempfile.mkdtemp(prefix="hpclm-pp-") if world.Get_rank() == 0 else None))
    P = world.Get_size()
    common = ["--set", "data.builtin_chars=20000", "--set", f"data.cache_dir={root / 'cache'}",
              "--set", "model.n_layer=4", "--set", "model.n_embd=16", "--set", "model.n_head=2",
              "--set", "model.block_size=16", "--set", "train.batch_size=8", "--set", "train.dtype=float64",
              "--set", "train.eval_batches=2", "--set", "train.threads=1", "--set", "optim.decay_steps=8"]
    pp = ["--set", f"parallel.pp={P}", "--set", "parallel.micro_batches=2"]
    assert main(["train", "--out", str(root / "straight")] + common + pp + ["--set", "train.max_steps=4",
                                                                           "--set", "train.trace=2:3"]) == 0
    if world.Get_rank() == 0:                                # the bubble line and the timeline figure
        capsys.readouterr()
        assert main(["analyze", str(root / "straight"), "--plots", str(root / "plots")]) == 0
        out = capsys.readouterr().out
        assert "pipeline bubble: measured" in out and (root / "plots" / "timeline_straight.png").stat().st_size > 0
    assert main(["train", "--out", str(root / "part")] + common + pp + ["--set", "train.max_steps=2"]) == 0
    # resume the pipeline's checkpoint as plain data parallelism on the same world
    assert main(["train", "--resume", str(root / "part"), "--set", "train.max_steps=4",
                 "--set", "parallel.pp=1", "--set", "parallel.micro_batches=1"]) == 0
    ok = True
    if world.Get_rank() == 0:
        import h5py
        with h5py.File(root / "straight" / "ckpt.h5") as a, h5py.File(root / "part" / "ckpt.h5") as b:
            ok = np.allclose(a["params"][...], b["params"][...], rtol=1e-10, atol=1e-13)
    assert_all(world, ok, "pp checkpoint resumed as dp differs from the straight pipeline run")
    for sets, needle in ((["--set", "parallel.pp=8"], "larger than model.n_layer"), (["--set", "parallel.pp=3"], "world size"),
                         (["--set", f"parallel.pp={P}", "--set", "parallel.stage_layers=1,1,1"], "stage_layers"),
                         (["--set", f"parallel.pp={P}", "--set", "parallel.micro_batches=3"], "divisible"),
                         (["--set", f"parallel.pp={P}", "--set", "train.grad_accum=2"], "parallel.micro_batches")):
        capsys.readouterr()
        rc = main(["train", "--out", str(root / "bad")] + common + sets)
        err = capsys.readouterr().err
        assert_all(world, rc == 2 and (world.Get_rank() != 0 or (needle in err and "Traceback" not in err)),
                   f"{sets}: rc {rc}, {err[-300:]}")
