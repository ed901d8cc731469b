"""The pipeline executor (hpclm.parallel.pipeline) under MPI, the world as one pipeline: for gpipe
and 1f1b with m = 1, 2, 4 micro-batches and interleaved over v = 2 chunks per rank with m = 2, 4, 8
(the multiples of p), every stage's gradients (the tied wte summed over the first and last stage)
and the loss (also of the forward-only evaluation) equal the single-process model's on the whole
batch, float64 to 1e-12; bytes on the wire equal the activations' closed form; in-flight
activations follow the schedule (1F1B: at most p - s micro-batches on stage s; interleaved: the
schedule's count of live micro-batch chunks, of their measured sizes); with parallel.recompute =
block the gradients are bitwise the stored ones' and the peak activation bytes of a stage equal
the closed form (hpclm.parallel.memory) of the caches the schedule keeps alive at once."""
import numpy as np
import pytest
from conftest import assert_all
from mpi4py import MPI

from hpclm import comm as collectives
from hpclm.config import ModelConfig
from hpclm.data import BatchSampler
from hpclm.model import GPT
from hpclm.model import units as U
from hpclm.model.stage import StageModel, balanced_ranges, interleave
from hpclm.parallel.memory import activation_bytes
from hpclm.parallel.pipeline import PipelineEngine, stage_norm_squared
from hpclm.parallel.schedule import peak_in_flight, schedule

MPI_SIZES = (2, 4)
SIZE = MPI.COMM_WORLD.Get_size()
VOCAB, BLOCK, SEED, BATCH, EVAL_TAG = 29, 16, 11, 8, 0x5054
MODEL = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=4, n_head=2, n_embd=16)
DEEP = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=8, n_head=2, n_embd=16)   # p v = 8 at P = 4
TOKENS = np.random.default_rng(5).integers(0, VOCAB, size=4000).astype(np.uint16)
SCHEDULES = [("gpipe", 1), ("1f1b", 1), ("interleaved", 2)]           # (schedule, chunks per rank)
CASES = ([(name, 1, m) for name in ("gpipe", "1f1b") for m in (1, 2, 4)]
         + [("interleaved", 2, m) for m in (2, 4, 8) if m % SIZE == 0])


def model_of(chunks):
    return MODEL if SIZE * chunks <= MODEL.n_layer else DEEP


def stage_of(world, chunks, seed=SEED):
    """This rank's stage of the world's pipeline: its chunks of P x chunks balanced virtual stages."""
    P, cfg = world.Get_size(), model_of(chunks)
    return StageModel(cfg, interleave(balanced_ranges(cfg, P * chunks), P)[world.Get_rank()], seed=seed,
                      dtype="float64")


def reference(cfg):
    model = GPT(cfg, seed=SEED, dtype="float64")
    x, y = BatchSampler(TOKENS, BLOCK, BATCH, SEED).batch(0)
    loss = model.forward_backward(x, y)
    return model, loss


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recompute"])
@pytest.mark.parametrize("name, chunks, micro", CASES)
def test_gradients_equal_single_process(world, name, chunks, micro, recompute):
    P, r = world.Get_size(), world.Get_rank()
    stage = stage_of(world, chunks)
    stage.recompute = recompute
    engine = PipelineEngine(stage, world, name, micro)
    sampler = BatchSampler(TOKENS, BLOCK, BATCH, SEED)
    batches = [sampler.batch(0, j, micro) for j in range(micro)]
    collectives.counters.reset()
    loss = engine.run(batches, BATCH // micro, BLOCK)
    moved = collectives.counters.by_group().get("world", {"bytes_sent": 0})["bytes_sent"]
    engine.tie_gradients()
    stage.grad_flat *= 1.0 / micro                           # the gradient sync's 1/m
    ref, ref_loss = reference(stage.cfg)
    problems = []
    for slot in stage.layout.slots:
        got, want = stage.grads[slot.name], ref.grads[slot.name]
        if not np.allclose(got, want, rtol=1e-12, atol=1e-15):
            problems.append(f"{slot.name}: max |d| {np.abs(got - want).max():.2e}")
    assert_all(world, not problems, f"stage {r}: " + "; ".join(problems[:4]))
    everywhere = engine.loss_everywhere(loss)
    assert_all(world, abs(everywhere - ref_loss) < 1e-12, f"loss {everywhere} vs {ref_loss}")
    x, y = BatchSampler(TOKENS, BLOCK, BATCH, SEED).batch(0)     # the evaluation's forward-only walk
    evaluated = engine.loss_everywhere(engine.forward_only(x, y, tag=EVAL_TAG))
    assert_all(world, abs(evaluated - ref_loss) < 1e-12, f"forward-only loss {evaluated} vs {ref_loss}")
    norm = np.sqrt(world.allreduce(stage_norm_squared(stage)))
    assert_all(world, abs(norm - np.linalg.norm(ref.grad_flat)) < 1e-12, "global norm over the stages")
    act = BATCH * BLOCK * MODEL.n_embd * 8                   # one micro-batch's activation, both ways
    virtual = [c * P + r for c in range(chunks)]
    links = sum((k > 0) + (k < P * chunks - 1) for k in virtual)
    assert_all(world, moved == links * act, f"sent {moved} B, closed form {links * act}")
    engine.free()


@pytest.mark.parametrize("name, chunks", SCHEDULES)
def test_in_flight_activations(world, name, chunks):
    """The counted caches' peak is the schedule's: 1F1B keeps at most p - s micro-batches' caches on
    stage s, GPipe all m, interleaved its live micro-batch chunks (each chunk's cache measured on
    its own)."""
    P, r = world.Get_size(), world.Get_rank()
    micro = 4
    sampler = BatchSampler(TOKENS, BLOCK, BATCH, SEED)
    batches = [sampler.batch(0, j, micro) for j in range(micro)]
    stage = stage_of(world, chunks)
    engine = PipelineEngine(stage, world, name, micro)
    engine.run(batches, BATCH // micro, BLOCK)
    engine.free()
    one = stage_of(world, chunks)
    x, y = batches[0]
    chunk_bytes = []
    for c, units in enumerate(one.chunks):
        k = c * P + r
        inp = x if k == 0 else np.zeros((BATCH // micro * BLOCK, MODEL.n_embd))
        _, caches = U.forward_units(units, one.resident, inp, BATCH // micro, BLOCK,
                                    targets=y if k == P * chunks - 1 else None)
        chunk_bytes.append(U.activation_bytes(caches))
    want = peak_in_flight(engine.ops, chunk_bytes.__getitem__)
    assert_all(world, stage.activation_bytes_peak == want, f"stage {r}: {stage.activation_bytes_peak} vs {want}")
    if name != "interleaved":
        fly = stage.activation_bytes_peak / chunk_bytes[0]
        assert_all(world, fly == (micro if name == "gpipe" else min(P - r, micro)), f"stage {r}: {fly} in flight")


@pytest.mark.parametrize("name, chunks", SCHEDULES)
def test_recompute_is_bitwise_and_peak_bytes_follow_the_closed_form(world, name, chunks):
    P, r = world.Get_size(), world.Get_rank()
    micro, b = 4, BATCH // 4
    sampler = BatchSampler(TOKENS, BLOCK, BATCH, SEED)
    batches = [sampler.batch(0, j, micro) for j in range(micro)]
    ops = schedule(name, P, micro, chunks)[r]
    got = {}
    for recompute in (False, True):
        stage = stage_of(world, chunks)
        stage.recompute = recompute
        engine = PipelineEngine(stage, world, name, micro)
        engine.run(batches, b, BLOCK)
        per_chunk = [activation_bytes(stage.cfg, b, BLOCK, 8, recompute=recompute,
                                      n_layer=sum(isinstance(u, U.Block) for u in units),
                                      head=isinstance(units[-1], U.Head), embedding=isinstance(units[0], U.Embedding))
                     for units in stage.chunks]
        got[recompute] = (stage.grad_flat.copy(), stage.activation_bytes_peak, peak_in_flight(ops, per_chunk.__getitem__))
        engine.free()
    assert_all(world, np.array_equal(got[False][0], got[True][0]), f"stage {r}: recomputed gradients differ")
    assert_all(world, all(peak == form for _, peak, form in got.values()), f"stage {r}: {[g[1:] for g in got.values()]}")
    assert_all(world, got[True][1] < got[False][1], f"stage {r}: recompute does not lower the peak")
