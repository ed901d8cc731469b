"""The pipeline executor (hpclm.parallel.pipeline) under MPI, the world as one pipeline: for gpipe
and 1f1b with m = 1, 2, 4 micro-batches, every stage's gradients (the tied wte summed over the
first and last stage) and the loss equal the single-process model's on the whole batch, float64
to 1e-12; bytes on the wire equal the activations' closed form; in-flight activations follow the
schedule (1F1B: at most p - s micro-batches on stage s); with parallel.recompute = block the
gradients are bitwise the stored ones' and the peak activation bytes of a stage equal the closed
form (hpclm.parallel.memory) times the schedule's micro-batches in flight."""
import numpy as np
import pytest
from conftest import assert_all

from hpclm import comm as collectives
from hpclm.config import ModelConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.model import units as U
from hpclm.model.stage import StageModel, balanced_ranges
from hpclm.parallel.memory import activation_bytes
from hpclm.parallel.pipeline import PipelineEngine, stage_norm_squared
from hpclm.parallel.schedule import peak_in_flight, schedule

MPI_SIZES = (2, 4)
VOCAB, BLOCK, SEED, BATCH = 29, 16, 11, 8
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=4, n_head=2, n_embd=16)
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)


def reference():
    model = GPT(MODEL, seed=SEED, dtype="float64")
    x, y = BatchSampler(TOKENS, BLOCK, BATCH, SEED).batch(0)
    loss = model.forward_backward(x, y)
    return model, loss


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("micro", [1, 2, 4])
@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_gradients_equal_single_process(world, name, micro, recompute):
    P, r = world.Get_size(), world.Get_rank()
    first, stop = balanced_ranges(MODEL, P)[r]
    stage = StageModel(MODEL, first, stop, seed=SEED, dtype="float64")
    stage.recompute = recompute
    engine = PipelineEngine(stage, world, name, micro)
    sampler = BatchSampler(TOKENS, BLOCK, BATCH, SEED)
    batches = [sampler.batch(0, j, micro) for j in range(micro)]
    collectives.counters.reset()
    loss = engine.run(batches, BATCH // micro, BLOCK)
    moved = collectives.counters.by_group().get("world", {"bytes_sent": 0})["bytes_sent"]
    engine.tie_gradients()
    stage.grad_flat *= 1.0 / micro                           # the gradient sync's 1/m
    ref, ref_loss = reference()
    problems = []
    for slot in stage.layout.slots:
        got, want = stage.grads[slot.name], ref.grads[slot.name]
        if not np.allclose(got, want, rtol=1e-12, atol=1e-15):
            problems.append(f"{slot.name}: max |d| {np.abs(got - want).max():.2e}")
    assert_all(world, not problems, f"stage {r}: " + "; ".join(problems[:4]))
    everywhere = engine.loss_everywhere(loss)
    assert_all(world, abs(everywhere - ref_loss) < 1e-12, f"loss {everywhere} vs {ref_loss}")
    norm = np.sqrt(world.allreduce(stage_norm_squared(stage)))
    assert_all(world, abs(norm - np.linalg.norm(ref.grad_flat)) < 1e-12, "global norm over the stages")
    act = BATCH * BLOCK * MODEL.n_embd * 8                   # one micro-batch's activation, both ways
    links = (r > 0) + (r < P - 1)
    assert_all(world, moved == links * act, f"sent {moved} B, closed form {links * act}")
    engine.free()


def test_in_flight_activations(world):
    """1F1B keeps at most p - s micro-batches' caches on stage s, GPipe all m (counted from arrays)."""
    P, r = world.Get_size(), world.Get_rank()
    first, stop = balanced_ranges(MODEL, P)[r]
    micro = 4
    sampler = BatchSampler(TOKENS, BLOCK, BATCH, SEED)
    batches = [sampler.batch(0, j, micro) for j in range(micro)]
    peaks = {}
    for name in ("gpipe", "1f1b"):
        stage = StageModel(MODEL, first, stop, seed=SEED, dtype="float64")
        engine = PipelineEngine(stage, world, name, micro)
        engine.run(batches, BATCH // micro, BLOCK)
        one = StageModel(MODEL, first, stop, seed=SEED, dtype="float64")
        x, y = batches[0]
        inp = x if r == 0 else np.zeros((BATCH // micro * BLOCK, MODEL.n_embd))
        _, caches = U.forward_units(one.units, one.resident, inp, BATCH // micro, BLOCK,
                                    targets=y if r == P - 1 else None)
        peaks[name] = stage.activation_bytes_peak / U.activation_bytes(caches)
        engine.free()
    assert_all(world, peaks["gpipe"] == micro and peaks["1f1b"] == min(P - r, micro), f"stage {r}: {peaks}")


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_recompute_is_bitwise_and_peak_bytes_follow_the_closed_form(world, name):
    P, r = world.Get_size(), world.Get_rank()
    first, stop = balanced_ranges(MODEL, P)[r]
    micro, b = 4, BATCH // 4
    sampler = BatchSampler(TOKENS, BLOCK, BATCH, SEED)
    batches = [sampler.batch(0, j, micro) for j in range(micro)]
    in_flight = peak_in_flight(schedule(name, P, micro)[r])
    got = {}
    for recompute in (False, True):
        stage = StageModel(MODEL, first, stop, seed=SEED, dtype="float64")
        stage.recompute = recompute
        engine = PipelineEngine(stage, world, name, micro)
        engine.run(batches, b, BLOCK)
        blocks = sum(isinstance(u, U.Block) for u in stage.units)
        form = in_flight * activation_bytes(MODEL, b, BLOCK, 8, recompute=recompute, n_layer=blocks,
                                            head=r == P - 1, embedding=r == 0)
        got[recompute] = (stage.grad_flat.copy(), stage.activation_bytes_peak, form)
        engine.free()
    assert_all(world, np.array_equal(got[False][0], got[True][0]), f"stage {r}: recomputed gradients differ")
    assert_all(world, all(peak == form for _, peak, form in got.values()), f"stage {r}: {[g[1:] for g in got.values()]}")
    assert_all(world, got[True][1] < got[False][1], f"stage {r}: recompute does not lower the peak")
