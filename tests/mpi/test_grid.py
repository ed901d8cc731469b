"""The dp x tp x pp grid (hpclm.parallel.grid) in the training step: at P = 4 every layout
(4x1x1, 2x2x1, 2x1x2, 1x2x2, 1x1x4) and at P = 8 2x2x2, built as `hpclm train` builds them, follow
the single-process trajectory with the same global batch (float64, AdamW, clipping active, two
micro-batches), with sequence parallelism too wherever tp > 1, and interleaved (2 chunks per pp rank) on
the pp = 2 layouts; a float32 trajectory at 1x2x2; the checkpoint is the single-process file and
resumes on another layout (1x2x2 -> 1x1x1 and back; 2x2x2 at P = 8); through `hpclm train` a
grid run resumes at tp = pp = 1, and layouts that do not fit give one line on every rank."""
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
from hpclm.parallel.build import build_strategy
from hpclm.timing.timer import Timer
from hpclm.train import build_model, train_step

MPI_SIZES = (4, 8)
VOCAB, BLOCK, SEED, BATCH = 29, 8, 11, 8                 # vocab 29 is padded at tp 2
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)
PATTERN = np.tile(np.random.default_rng(6).permutation(VOCAB), 150).astype(np.uint16)   # learnable


def config(dp=1, tp=1, pp=1, steps=3, dtype="float64", tie=True, micro=2, sp=False, schedule="1f1b"):
    model = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=4, n_head=2, n_embd=16, tie_weights=tie)
    cfg = Config(model=model, optim=OptimConfig(name="adamw", lr=1e-2, min_lr=1e-3, warmup_steps=1,
                                                decay_steps=steps, grad_clip=0.05, weight_decay=0.1))
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.dtype, cfg.train.seed = steps, BATCH, dtype, SEED
    cfg.comm.algorithm = "ring"
    cfg.parallel.dp, cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.micro_batches = dp, tp, pp, micro
    cfg.parallel.sequence_parallel = sp and tp > 1
    cfg.parallel.schedule, cfg.parallel.chunks = schedule, 2 if schedule == "interleaved" else 1
    return cfg.validate()


class Run:
    """One layout's model and strategy, built as hpclm.train builds them (groups None: one process)."""

    def __init__(self, world, cfg):
        self.world, self.cfg = world, cfg
        p = cfg.parallel
        self.groups = None if world is None else collectives.Groups.build(world, dp=p.dp, tp=p.tp, pp=p.pp)
        if self.groups is None:
            self.model = GPT(cfg.model, seed=SEED, dtype=cfg.train.dtype)
            self.strategy = build_strategy(cfg, None, self.model)
        else:
            self.model = build_model(cfg, 1, self.groups)
            self.strategy = build_strategy(cfg, self.groups.dp, self.model, pp_group=self.groups.pp)
        dp = None if self.groups is None else self.groups.dp
        rank, size = (0, 1) if dp is None else (dp.Get_rank(), dp.Get_size())
        self.dp_size = size
        self.sampler_args = (BLOCK, BATCH, SEED, rank, size)

    def steps(self, start, n, tokens=TOKENS):
        """n train_steps from `start`; the global mean losses (a dp rank's loss is of its rows)."""
        block, batch, seed, rank, size = self.sampler_args
        session = SimpleNamespace(cfg=self.cfg, model=self.model, timer=Timer(enabled=False), strategy=self.strategy,
                                  sampler=BatchSampler(tokens, block, batch, seed, rank=rank, world=size))
        losses = [train_step(session, step)[0] for step in range(start, start + n)]
        if self.groups is not None and size > 1:
            losses = [self.groups.dp.allreduce(loss) / size for loss in losses]
        return losses

    def full_params(self):
        """The single-process parameters through the checkpoint path, on every rank."""
        state = self.strategy.checkpoint()
        if self.world is None:
            return state.params
        return self.world.bcast(None if state is None else state.params, root=0)

    def save(self, path, step):
        state = self.strategy.checkpoint()
        if self.world is None or self.world.Get_rank() == 0:
            ckpt_io.save(path, params=state.params, layout=state.layout or self.model.layout,
                         optim_state=state.optim_state, step=step, config_json="{}", tokenizer_json="{}",
                         rng_state=[])
        if self.world is not None:
            self.world.Barrier()

    def free(self):
        if self.groups is not None:
            engine = getattr(self.strategy, "engine", None)
            if engine is not None:
                engine.free()
            self.groups.free()


_REF = {}


def reference(steps=3, **kw):
    key = (steps, tuple(sorted(kw.items())))
    if key not in _REF:
        run = Run(None, config(steps=steps, **kw))
        _REF[key] = (run.steps(0, steps, tokens=PATTERN if kw.get("dtype") == "float32" else TOKENS), run.full_params())
    return _REF[key]


def close_to_scale(a, b, rtol=1e-12):
    """Equal to rtol of b's largest element (AdamW's steps amplify round-off where the moments are tiny)."""
    return a.shape == b.shape and np.abs(a - b).max() <= rtol * np.abs(b).max()


def layouts(P):
    """(dp, tp, pp) layouts tested at world size P."""
    return [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2), (1, 1, 4)] if P == 4 else [(2, 2, 2)]


@pytest.mark.parametrize("schedule, sp", [("1f1b", False), ("gpipe", False), ("1f1b", True), ("interleaved", False),
                                          ("interleaved", True)])
def test_every_layout_equals_single_process(world, schedule, sp):
    """sp: with sequence parallelism wherever tp > 1 (the stages then exchange token-row blocks).
    interleaved: 2 chunks per pp rank, on the layouts with pp = 2 (4 virtual stages of the 4 blocks)."""
    ref_losses, ref = reference()
    trained = GPT(config().model, dtype="float64")
    trained.flat[...] = ref
    x, y = (np.stack([TOKENS[s + k:s + k + BLOCK] for s in (0, 100, 200, 300)]).astype(np.int64) for k in (0, 1))
    ref_eval = trained.loss(x, y)
    for dp, tp, pp in layouts(world.Get_size()):
        if (sp and tp == 1) or (schedule == "interleaved" and pp != 2):
            continue
        run = Run(world, config(dp, tp, pp, sp=sp, schedule=schedule))
        try:
            losses = run.steps(0, 3)
            params = run.full_params()
            run.strategy.check_replicas(3)
            evaluated = run.strategy.loss(run.model, x, y)      # the evaluation's path: forward only
        finally:
            run.free()
        name = f"{dp}x{tp}x{pp} {schedule}" + (" sequence parallel" if sp else "")
        assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"{name}: losses {losses} vs {ref_losses}")
        assert_all(world, close_to_scale(params, ref), f"{name}: max |d| {np.abs(params - ref).max():.2e}")
        assert_all(world, abs(evaluated - ref_eval) <= 1e-11 * ref_eval, f"{name}: eval loss {evaluated} vs {ref_eval}")


def test_bytes_per_group_equal_closed_form(world):
    """One step at 1x2x2 (P = 4) or 2x2x2 (P = 8), MPI's collectives (an all-reduce of n elements
    charged 2 (P-1)/P n): per micro-batch of N token rows the tp group all-reduces 4 (N, C) per
    block of the rank's stage, the embedding's (N, C) on the first stage, the head's (N, C) and the
    loss's (N,) max and (2, N) sums on the last; the pp group carries one (N, C) per micro-batch
    each way; the tied wte's vocab shard is all-reduced once between the first and last stage; the
    dp group all-reduces the stage shard once."""
    dp, tp, pp = (1, 2, 2) if world.Get_size() == 4 else (2, 2, 2)
    cfg = config(dp, tp, pp, steps=2)
    cfg.comm.algorithm = "mpi"
    run = Run(world, cfg)
    try:
        run.steps(0, 1)
        collectives.counters.reset()
        run.steps(1, 1)
        moved = collectives.counters.by_group()
        stage = run.model
    finally:
        run.free()
    item, m, C = 8, cfg.parallel.micro_batches, cfg.model.n_embd
    N = BATCH // (dp * m) * BLOCK
    charge = lambda n, P: 2 * (P - 1) * n * item // P            # noqa: E731
    first, last = stage.first == 0, stage.stop == cfg.model.n_layer + 2
    blocks = sum(type(u).__name__ == "Block" for u in stage.units)
    per_micro = [N * C] * (4 * blocks + first + last) + ([N, 2 * N] if last else [])
    expect = {"tp": sum(charge(n, tp) for n in per_micro) * m, "pp": m * N * C * item,
              "other": charge(stage.params["wte"].size, 2), "dp": charge(stage.layout.size, dp) if dp > 1 else 0}
    for group, want in expect.items():
        got = moved.get(group, {"bytes_sent": 0})["bytes_sent"]
        assert_all(world, got == want, f"stage [{stage.first}, {stage.stop}) {group}: sent {got} vs {want}")


def test_untied_head_on_the_grid(world):
    ref_losses, ref = reference(tie=False)
    dp, tp, pp = (1, 2, 2) if world.Get_size() == 4 else (2, 2, 2)
    run = Run(world, config(dp, tp, pp, tie=False))
    try:
        losses, params = run.steps(0, 3), run.full_params()
    finally:
        run.free()
    assert_all(world, np.allclose(losses, ref_losses, rtol=1e-12), f"losses {losses} vs {ref_losses}")
    assert_all(world, close_to_scale(params, ref), f"max |d| {np.abs(params - ref).max():.2e}")


def test_float32_trajectory_at_1x2x2(world):
    if world.Get_size() != 4:
        pytest.skip("run at P = 4 (the exact float64 steps run at P = 8 too)")
    steps = 12
    ref_losses, _ = reference(steps=steps, dtype="float32")
    cfg = config(1, 2, 2, steps=steps, dtype="float32")
    run = Run(world, cfg)
    try:
        losses = run.steps(0, steps, tokens=PATTERN)
    finally:
        run.free()
    assert_all(world, np.allclose(losses, ref_losses, rtol=2e-5),
               f"max |d loss| {np.abs(np.subtract(losses, ref_losses)).max():.2e}")
    assert_all(world, ref_losses[-1] < ref_losses[0] - 0.05, f"the reference did not learn: {ref_losses}")


def test_checkpoint_resumes_on_another_layout(world, tmp_path_factory):
    """3 steps on the grid, saved, 2 more at 1x1x1 (and 3 at 1x1x1 resumed on the grid) equal 5
    uninterrupted single-process steps."""
    grid = (1, 2, 2) if world.Get_size() == 4 else (2, 2, 2)
    ref_losses, ref = reference(steps=5)
    path = world.bcast(str(tmp_path_factory.mktemp("grid") / "ckpt.h5") if world.Get_rank() == 0 else None)

    run = Run(world, config(*grid, steps=5))
    try:
        run.steps(0, 3)
        run.save(path, 3)
    finally:
        run.free()
    single = Run(None, config(steps=5))
    single.strategy.restore(ckpt_io.Checkpoint(path), 3)
    losses = single.steps(3, 2)
    assert_all(world, close_to_scale(single.full_params(), ref), "grid -> 1x1x1: parameters differ")
    assert_all(world, np.allclose(losses, ref_losses[3:], rtol=1e-12), f"grid -> 1x1x1: losses {losses}")

    single = Run(None, config(steps=5))
    single.steps(0, 3)
    if world.Get_rank() == 0:
        single.save(path, 3)
    world.Barrier()
    run = Run(world, config(*grid, steps=5))
    try:
        run.strategy.restore(ckpt_io.Checkpoint(path), 3)
        losses = run.steps(3, 2)
        params = run.full_params()
    finally:
        run.free()
    assert_all(world, close_to_scale(params, ref), f"1x1x1 -> grid: max |d| {np.abs(params - ref).max():.2e}")
    assert_all(world, np.allclose(losses, ref_losses[3:], rtol=1e-12), f"1x1x1 -> grid: losses {losses}")


def test_cli_grid_resumes_at_one_process_layout_and_bad_layouts(world, capsys):
    if world.Get_size() != 4:
        pytest.skip("run at P = 4")
    root = Path(world.bcast(tempfile.mkdtemp(prefix="hpclm-grid-") if world.Get_rank() == 0 else None))
    common = ["--set", "data.builtin_chars=20000", "--set", f"data.cache_dir={root / 'cache'}",
              "--set", "model.n_layer=2", "--set", "model.n_embd=16", "--set", "model.n_head=2",
              "--set", "model.block_size=16", "--set", "train.batch_size=8", "--set", "train.dtype=float64",
              "--set", "train.eval_batches=2", "--set", "train.threads=1", "--set", "optim.decay_steps=4"]
    grid = ["--set", "parallel.tp=2", "--set", "parallel.pp=2", "--set", "parallel.micro_batches=2"]
    assert main(["train", "--out", str(root / "straight")] + common + grid + ["--set", "train.max_steps=4"]) == 0
    assert main(["train", "--out", str(root / "part")] + common + grid + ["--set", "train.max_steps=2"]) == 0
    assert main(["train", "--resume", str(root / "part"), "--set", "train.max_steps=4", "--set", "parallel.tp=1",
                 "--set", "parallel.pp=1"]) == 0
    ok = True
    if world.Get_rank() == 0:
        import h5py
        with h5py.File(root / "straight" / "ckpt.h5") as a, h5py.File(root / "part" / "ckpt.h5") as b:
            ok = np.allclose(a["params"][...], b["params"][...], rtol=1e-10, atol=1e-13)
    assert_all(world, ok, "the 1x2x2 checkpoint resumed at 4x1x1 differs from the straight grid run")
    for sets, needle in ((["--set", "model.n_head=1"], "must divide model.n_head"),
                         (["--set", "model.n_layer=1"], "larger than model.n_layer"),
                         (["--set", "parallel.dp=2"], "world size"),
                         (["--set", "parallel.sequence_parallel=true", "--set", "model.block_size=15"],
                          "sequence_parallel")):
        capsys.readouterr()
        rc = main(["train", "--out", str(root / "bad")] + common + grid + sets)
        err = capsys.readouterr().err
        assert_all(world, rc == 2 and (world.Get_rank() != 0 or (needle in err and "Traceback" not in err)),
                   f"{sets}: rc {rc}, {err[-300:]}")
