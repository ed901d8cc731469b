"""The model side of tensor parallelism without MPI (hpclm.model.tensor_parallel): the slicing maps
between the full flat layout and a tp rank's are exact inverses for every tp, a rank's c_attn
columns are whole heads of q, k and v, padding is zeros; a one-rank ShardedGPT (vocab-parallel
units, identity collectives) equals the GPT; bad splits give one clear message."""
import numpy as np
import pytest

from hpclm.config import Config, ModelConfig
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.model.params import ParamLayout
from hpclm.model.tensor_parallel import (ShardedGPT, padded_vocab, shard_flat, shard_specs, tp_shapes, unshard_flat,
                                         vocab_range)
from hpclm.model.units import IdentityHooks

CFG = ModelConfig(vocab_size=29, block_size=8, n_layer=2, n_head=12, n_embd=48)


class Alone(IdentityHooks):
    """The collectives of a tp group of one: every pair is the identity."""
    copy_to = copy_to_backward = reduce_from = reduce_from_backward = IdentityHooks.column_in

    def all_reduce(self, x, op="sum"):
        return x

    def gather_last(self, x):
        return x

    def rows(self, n):
        return 0, n


@pytest.mark.parametrize("tp", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("tie", [True, False])
def test_shard_then_unshard_is_the_identity(tp, tie):
    cfg = ModelConfig(**{**CFG.__dict__, "tie_weights": tie})
    full = GPT(cfg, seed=1, dtype="float64")
    local = ParamLayout(tp_shapes(cfg, tp))
    specs = [shard_specs(cfg, tp, r) for r in range(tp)]
    shards = [shard_flat(full.flat, full.layout, local, specs[r]) for r in range(tp)]
    assert np.array_equal(unshard_flat(shards, full.layout, local, specs), full.flat)
    replicated = sum(s.size for s in local.slots if specs[0][s.name] is None)
    padding = (padded_vocab(cfg.vocab_size, tp) - cfg.vocab_size) * cfg.n_embd * (1 if tie else 2)   # wte, lm_head
    assert tp * (local.size - replicated) + replicated == full.layout.size + padding


@pytest.mark.parametrize("tp", [2, 3, 4])
def test_c_attn_shard_is_whole_heads_of_q_k_and_v(tp):
    full = GPT(CFG, seed=2, dtype="float64")
    local = ParamLayout(tp_shapes(CFG, tp))
    C, c = CFG.n_embd, CFG.n_embd // tp
    qkv = full.params["h.1.attn.c_attn.weight"]                               # (C, 3C) = [q | k | v]
    for r in range(tp):
        mine = local.views(shard_flat(full.flat, full.layout, local, shard_specs(CFG, tp, r)))
        part = mine["h.1.attn.c_attn.weight"]                                  # (C, 3c)
        for j in range(3):                                                    # q, k, v: heads r c .. (r+1) c
            assert np.array_equal(part[:, j * c:(j + 1) * c], qkv[:, j * C + r * c:j * C + (r + 1) * c])
        assert np.array_equal(mine["h.1.attn.c_proj.weight"], full.params["h.1.attn.c_proj.weight"][r * c:(r + 1) * c])
        lo, hi, n_real = vocab_range(CFG.vocab_size, tp, r)
        assert np.array_equal(mine["wte"][:n_real], full.params["wte"][lo:lo + n_real])
        assert not mine["wte"][n_real:].any()                                 # padding rows are zeros


@pytest.mark.parametrize("tie", [True, False])
def test_one_rank_sharded_model_equals_the_gpt(tie):
    cfg = ModelConfig(**{**CFG.__dict__, "tie_weights": tie})
    full = GPT(cfg, seed=3, dtype="float64")
    shard = ShardedGPT(cfg, 1, 0, Alone(), seed=3, dtype="float64")
    assert np.array_equal(shard.flat, full.flat)
    rng = np.random.default_rng(4)
    x, y = rng.integers(0, cfg.vocab_size, size=(2, 3, 8))
    ref = full.forward_backward(x, y)
    loss = shard.forward_backward(x, y)
    assert abs(loss - ref) <= 1e-13 * ref
    assert np.allclose(shard.grad_flat, full.grad_flat, rtol=1e-11, atol=1e-15)
    assert np.allclose(shard.forward(x), full.forward(x), rtol=1e-12)
    assert shard.num_params() == full.num_params()


def test_tp_not_dividing_the_heads_is_one_message():
    cfg = Config(model=ModelConfig(**{**CFG.__dict__, "n_head": 4, "n_embd": 16}))
    cfg.parallel.tp = 3
    with pytest.raises(UserError, match="parallel.tp=3 must divide model.n_head=4"):
        cfg.validate()
    cfg.parallel.tp = 2
    cfg.validate()
    cfg.parallel.tp, cfg.parallel.sequence_parallel, cfg.model.block_size = 4, True, 6
    with pytest.raises(UserError, match="sequence_parallel needs parallel.tp=4 to divide model.block_size=6"):
        cfg.validate()


@pytest.mark.parametrize("tp", [2, 3])
@pytest.mark.parametrize("tie", [True, False])
def test_pipeline_stage_of_a_shard(tp, tie):
    """StageModel.of a ShardedGPT (the grid's stage): its tensors are the rank's shards of the full
    model's (the tied wte copy on the last stage the same vocab shard); slicing the full flat to the
    stage shard (restore) and unsharding the ranks' stages to the stage layout (checkpoint) are the
    maps the grid's checkpoints use, exact inverses of each other. The last case is an interleaved
    rank's two chunks (Block 0; Block 2 + Head)."""
    from hpclm.model.stage import StageModel, balanced_ranges, full_offsets, stage_layout
    cfg = ModelConfig(**{**CFG.__dict__, "n_layer": 3, "tie_weights": tie})
    full = GPT(cfg, seed=5, dtype="float64")
    for ranges in [[r] for r in balanced_ranges(cfg, 2)] + [[(1, 2), (3, 5)]]:
        first = ranges[0][0]
        plain = StageModel(cfg, ranges, seed=5, dtype="float64")
        assert np.array_equal(StageModel.of(full, ranges).flat, plain.flat)
        layout, tied = stage_layout(cfg, ranges)
        stages = [StageModel.of(ShardedGPT(cfg, tp, r, Alone(), seed=5, dtype="float64"), ranges)
                  for r in range(tp)]
        assert [s.name for s in stages[0].layout.slots] == [s.name for s in layout.slots]
        assert stages[0].tied_copy == tied == (tie and first > 0)
        for r, stage in enumerate(stages):
            sliced = shard_flat(plain.flat, layout, stage.layout, stage.specs)
            assert np.array_equal(sliced, stage.flat)
            if tied:
                lo, _, n_real = vocab_range(cfg.vocab_size, tp, r)
                assert np.array_equal(stage.params["wte"][:n_real], full.params["wte"][lo:lo + n_real])
        specs = [shard_specs(cfg, tp, r) for r in range(tp)]
        whole = unshard_flat([s.flat for s in stages], layout, stages[0].layout, specs)
        assert np.array_equal(whole, plain.flat)
        for mine, theirs, n in full_offsets(cfg, layout, tied):
            assert np.array_equal(whole[mine:mine + n], full.flat[theirs:theirs + n])
