"""Pipeline stage models (hpclm.model.stage) without MPI: the ranks' chunks of pp x chunks virtual
stages (parallel.chunks, interleaved) tile the single-process model exactly once (the tied wte
copy aside), every rank's values are the full GPT's, the Embedding sits in virtual stage 0 and
the Head in the last, and ranges that cannot be a stage are refused."""
import numpy as np
import pytest

from hpclm.config import Config, ModelConfig
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.model import units as U
from hpclm.model.stage import StageModel, full_offsets, interleave, stage_layout
from hpclm.parallel.build import stage_ranges

MODEL = ModelConfig(vocab_size=29, block_size=8, n_layer=8, n_head=2, n_embd=16)


def ranks_of(pp, chunks, stage_layers=""):
    cfg = Config(model=MODEL)
    cfg.parallel.pp, cfg.parallel.micro_batches, cfg.parallel.stage_layers = pp, pp, stage_layers
    cfg.parallel.schedule, cfg.parallel.chunks = ("interleaved", chunks) if chunks > 1 else ("1f1b", 1)
    return stage_ranges(cfg.validate())


@pytest.mark.parametrize("pp, chunks", [(2, 1), (2, 2), (4, 2), (2, 4)])
def test_chunks_tile_the_model_once(pp, chunks):
    full = GPT(MODEL, seed=3, dtype="float64")
    ranks = ranks_of(pp, chunks)
    virtual = [r for k in range(chunks) for r in (ranks[s][k] for s in range(pp))]   # virtual stage order
    assert [len(r) for r in ranks] == [chunks] * pp
    assert virtual[0][0] == 0 and virtual[-1][1] == MODEL.n_layer + 2
    assert all(a[1] == b[0] for a, b in zip(virtual, virtual[1:]))                  # contiguous, in order
    covered = np.zeros(full.layout.size, dtype=int)
    for s, ranges in enumerate(ranks):
        stage = StageModel(MODEL, ranges, seed=3, dtype="float64")
        layout, tied = stage_layout(MODEL, ranges)
        assert [x.name for x in layout.slots] == [x.name for x in stage.layout.slots] and tied == stage.tied_copy
        assert tied == (s == pp - 1)                      # the last rank's Head reads its own wte copy
        assert isinstance(stage.chunks[0][0], U.Embedding) == (s == 0)
        assert isinstance(stage.chunks[-1][-1], U.Head) == (s == pp - 1)
        assert [u for c in stage.chunks for u in c] == stage.units and len(stage.chunks) == chunks
        for mine, theirs, n in full_offsets(MODEL, layout, tied):
            assert np.array_equal(stage.flat[mine:mine + n], full.flat[theirs:theirs + n])
            covered[theirs:theirs + n] += 1
        if tied:
            assert np.array_equal(stage.params["wte"], full.params["wte"])
    assert (covered == 1).all()


def test_stage_layers_name_every_virtual_stage():
    ranks = ranks_of(2, 2, stage_layers="3,1,2,2")
    assert ranks == [[(0, 4), (5, 7)], [(4, 5), (7, 10)]]
    assert interleave([(0, 2), (2, 3), (3, 4), (4, 6)], 2) == [[(0, 2), (3, 4)], [(2, 3), (4, 6)]]


@pytest.mark.parametrize("ranges", [[], [(1, 1)], [(3, 5), (1, 2)], [(1, 3), (2, 4)]])
def test_ranges_that_are_no_stage_are_refused(ranges):
    with pytest.raises(UserError, match="every chunk must hold a unit"):
        StageModel(MODEL, ranges)
