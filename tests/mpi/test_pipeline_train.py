"""Pipeline parallelism in the training step (parallel.pp > 1, hpclm.parallel.pipeline_optimizer):
every layout dp x pp of the world, gpipe, 1f1b and interleaved (2 chunks per rank), stepped by
hpclm.train.train_step, follows the single-process trajectory with the same global batch
(float64, 1e-12), with recomputation and with ZeRO-1 on the dp group too; the checkpoint is the
single-process one and resumes on another layout (an interleaved run's at pp = 1 and back); bad
layouts give one clear error."""
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_all

from hpclm import checkpoint as ckpt_io
from hpclm import comm as collectives
from hpclm.cli import main
from hpclm.config import Config, ModelConfig, OptimConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.model.params import ParamLayout, gpt2_shapes
from hpclm.model.stage import StageModel
from hpclm.parallel.build import build_strategy, stage_ranges
from hpclm.timing.timer import Timer
from hpclm.train import train_step

MPI_SIZES = (2, 4)
VOCAB, BLOCK, SEED, STEPS, BATCH = 29, 16, 11, 3, 16
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=4, n_head=2, n_embd=16)
DEEP = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=8, n_head=2, n_embd=16)   # pp 4 x 2 chunks
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)
CHUNKS = {"gpipe": 1, "1f1b": 1, "interleaved": 2}
MODEL_SIZE = ParamLayout(gpt2_shapes(MODEL)).size


def config(pp, schedule="1f1b", micro=2, stage_layers="", recompute="none", zero=0, model=MODEL, steps=STEPS):
    cfg = Config(model=model, optim=OptimConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1, decay_steps=steps,
                                                grad_clip=0.5))
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.dtype = steps, BATCH, "float64"
    cfg.parallel.pp, cfg.parallel.schedule, cfg.parallel.micro_batches = pp, schedule, micro
    cfg.parallel.chunks = CHUNKS[schedule] if pp > 1 else 1
    cfg.parallel.stage_layers, cfg.parallel.recompute, cfg.parallel.zero = stage_layers, recompute, zero
    return cfg.validate()


def close(params, ref):
    """Equal to float64 round-off: 1e-12 relative (1e-14 absolute) for the 4-block model; for the
    8-block one 1e-12 of its largest parameter (after AdamW steps, elements whose moments are tiny
    differ by ~1e-13 whatever the schedule, 1f1b's as interleaved's)."""
    if ref.size == MODEL_SIZE:
        return np.allclose(params, ref, rtol=1e-12, atol=1e-14)
    return params.shape == ref.shape and np.abs(params - ref).max() <= 1e-12 * np.abs(ref).max()


def model_for(pp, schedule):
    """The 4-block model, or the 8-block one where pp x chunks virtual stages need more blocks."""
    return MODEL if pp * CHUNKS[schedule] <= MODEL.n_layer else DEEP


def run(world, cfg, with_state=False, start=0, stop=None, restore=None):
    """train_steps start..stop-1 (default all of cfg's) on this rank's part of the layout, after
    restoring checkpoint `restore` if given; the full parameters (checkpoint path) and the losses
    (and the whole CheckpointState if with_state)."""
    groups = collectives.Groups.build(world, pp=cfg.parallel.pp) if world is not None else None
    if groups is None:
        model = GPT(cfg.model, seed=SEED, dtype="float64")
        strategy, rank, size = build_strategy(cfg, None, model), 0, 1
    else:
        model = StageModel(cfg.model, stage_ranges(cfg)[groups.pp.Get_rank()], seed=SEED, dtype="float64")
        model.recompute = cfg.parallel.recompute == "block"
        strategy = build_strategy(cfg, groups.dp, model, pp_group=groups.pp)
        rank, size = groups.dp.Get_rank(), groups.dp.Get_size()
    if restore is not None:
        strategy.restore(restore, start)
    session = SimpleNamespace(cfg=cfg, model=model, timer=Timer(enabled=False), strategy=strategy,
                              sampler=BatchSampler(TOKENS, BLOCK, BATCH, SEED, rank=rank, world=size))
    stop = cfg.train.max_steps if stop is None else stop
    losses = [train_step(session, step)[0] for step in range(start, stop)]
    if groups is not None:                                   # each dp rank's loss is of its own rows
        losses = [groups.dp.allreduce(loss) / size for loss in losses]
    state = strategy.checkpoint()
    if groups is not None:
        state = world.bcast(None if state is None else state, root=0)
        strategy.engine.free()
        groups.free()
    return (state.params, losses, state) if with_state else (state.params, losses)


_REF = {}


def reference(model=MODEL, steps=STEPS):
    key = (model.n_layer, steps)
    if key not in _REF:
        _REF[key] = run(None, config(1, micro=1, model=model, steps=steps), with_state=True)
    return _REF[key][:2]


LAYOUT_CASES = ([(s, m) for s in ("gpipe", "1f1b") for m in (1, 2, 4)]
                + [("interleaved", m) for m in (2, 4, 8)])


@pytest.mark.parametrize("schedule, micro", LAYOUT_CASES)
def test_every_layout_equals_single_process(world, schedule, micro):
    """Every dp x pp of the world that the schedule runs (interleaved: m a multiple of pp)."""
    P = world.Get_size()
    layouts = [d for d in (2, 4) if P % d == 0 and (schedule != "interleaved" or micro % d == 0)]
    assert layouts
    for pp in layouts:
        model = model_for(pp, schedule)
        ref, ref_losses = reference(model)
        params, losses = run(world, config(pp, schedule, micro, model=model))
        assert_all(world, close(params, ref),
                   f"dp {P // pp} x pp {pp} {schedule} m={micro}: max |d| {np.abs(params - ref).max():.2e}")
        assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")


def test_interleaved_trajectory_of_eight_steps(world):
    """pp = P, 2 chunks per rank, m = 2 P: eight steps (AdamW warm-up, decay, clipping) equal the
    single process's."""
    P = world.Get_size()
    model = model_for(P, "interleaved")
    ref, ref_losses = reference(model, steps=8)
    params, losses = run(world, config(P, "interleaved", 2 * P, model=model, steps=8))
    assert_all(world, close(params, ref),
               f"pp {P} interleaved: max |d| {np.abs(params - ref).max():.2e}")
    assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "interleaved"])
def test_recompute_follows_the_single_process_trajectory(world, schedule):
    P = world.Get_size()
    model = model_for(P, schedule)
    ref, ref_losses = reference(model)
    params, losses = run(world, config(P, schedule, micro=4, recompute="block", model=model))
    assert_all(world, close(params, ref),
               f"pp {P} {schedule} recompute: max |d| {np.abs(params - ref).max():.2e}")
    assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "interleaved"])
def test_zero1_on_the_dp_group_of_a_pipeline_equals_single_process(world, schedule):
    """dp x pp = 2 x 2 at P = 4 (1 x 2 at P = 2): ZeRO-1 shards each stage's AdamW state over its dp
    group; parameters, losses and the gathered optimizer state are the single-process ones."""
    reference()
    ref, ref_losses, ref_state = _REF[(MODEL.n_layer, STEPS)]
    params, losses, state = run(world, config(2, schedule, micro=2, zero=1), with_state=True)
    assert_all(world, close(params, ref),
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
    ref, _, ref_state = _REF[(MODEL.n_layer, STEPS)]
    cfg = config(2, zero=1)
    groups = collectives.Groups.build(world, pp=2)
    model = StageModel(MODEL, stage_ranges(cfg)[groups.pp.Get_rank()], seed=SEED + 1,
                       dtype="float64")                                        # other initial values
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


def save(path, state, step):
    ckpt_io.save(path, params=state.params, layout=state.layout, optim_state=state.optim_state, step=step,
                 config_json="{}", tokenizer_json="{}", rng_state=[])


def test_interleaved_checkpoint_resumes_at_pp_1_and_back(world, tmp_path_factory):
    """3 interleaved steps (pp = P, 2 chunks per rank) saved, then 2 more in one process; and 3
    single-process steps saved, then 2 more interleaved: both equal 5 uninterrupted steps."""
    P, rank = world.Get_size(), world.Get_rank()
    model = model_for(P, "interleaved")
    ref, ref_losses = reference(model, steps=5)
    path = world.bcast(str(tmp_path_factory.mktemp("pp") / "ckpt.h5") if rank == 0 else None)
    inter = config(P, "interleaved", 2 * P, model=model, steps=5)
    one = config(1, micro=1, model=model, steps=5)

    state = run(world, inter, with_state=True, stop=3)[2]
    if rank == 0:
        save(path, state, 3)
    world.Barrier()
    params, losses = run(None, one, start=3, restore=ckpt_io.Checkpoint(path))
    assert_all(world, close(params, ref), "interleaved -> pp 1: parameters differ")
    assert_all(world, np.allclose(losses, ref_losses[3:], rtol=1e-12), f"interleaved -> pp 1: losses {losses}")

    state = run(None, one, with_state=True, stop=3)[2]
    if rank == 0:
        save(path, state, 3)
    world.Barrier()
    params, losses = run(world, inter, start=3, restore=ckpt_io.Checkpoint(path))
    assert_all(world, close(params, ref),
               f"pp 1 -> interleaved: max |d| {np.abs(params - ref).max():.2e}")
    assert_all(world, np.allclose(losses, ref_losses[3:], rtol=1e-12), f"pp 1 -> interleaved: losses {losses}")


def test_explicit_stage_layers(world):
    ref, _ = reference()
    P = world.Get_size()
    layers = "3,1" if P == 2 else "1,1,1,1"
    params, _ = run(world, config(P, stage_layers=layers))
    assert_all(world, close(params, ref), f"stage_layers {layers}")
    ref, _ = reference(DEEP)                                 # interleaved: one entry per virtual stage
    layers = "3,1,2,2" if P == 2 else "1,1,1,1,1,1,1,1"
    params, _ = run(world, config(P, "interleaved", micro=P, stage_layers=layers, model=DEEP))
    assert_all(world, close(params, ref), f"interleaved stage_layers {layers}")


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
        assert main(["schedule", "--run", str(root / "straight")]) == 0          # the schedule at the run's times
        out = capsys.readouterr().out
        assert "pipeline bubble: measured" in out and "the schedule with the run's stage times" in out
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
                         (["--set", f"parallel.pp={P}", "--set", "train.grad_accum=2"], "parallel.micro_batches"),
                         (["--set", f"parallel.pp={P}", "--set", "parallel.schedule=interleaved"], "parallel.chunks >= 2"),
                         (["--set", f"parallel.pp={P}", "--set", "parallel.schedule=interleaved", "--set", "parallel.chunks=2",
                           "--set", "parallel.micro_batches=3", "--set", "model.n_layer=8"], "multiple of parallel.pp"),
                         (["--set", f"parallel.pp={P}", "--set", "parallel.schedule=interleaved", "--set", "parallel.chunks=4",
                           "--set", f"parallel.micro_batches={P}"], "larger than model.n_layer")):
        capsys.readouterr()
        rc = main(["train", "--out", str(root / "bad")] + common + sets)
        err = capsys.readouterr().err
        assert_all(world, rc == 2 and (world.Get_rank() != 0 or (needle in err and "Traceback" not in err)),
                   f"{sets}: rc {rc}, {err[-300:]}")
