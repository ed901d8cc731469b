"""Compressed collectives (hpclm.parallel.exchange / onebit / powersgd) against a NumPy simulation
of the same algorithm, computed on every rank from every rank's input (each rank regenerates the
others' inputs from a seed): summable all-reduce, all-gather of fixed- and variable-size payloads,
sign majority vote (sharded: all-to-all, vote per chunk, all-gather; and the all-gather
alternative), DeepSpeed's 1-bit compressed all-reduce (worker and server error buffers over
several calls), PowerSGD (warm start, error feedback, two all-reduces). Byte counters equal each
compressor's payload_bytes times the collective's volume.

The compressors here are tiny local ones (the contract of hpclm.compress.base), except topk and
threshold: the registry's, in both wire formats (sparse_format compact and plain); the other registry
compressors are exercised where they exist."""
import numpy as np
import pytest
from conftest import assert_all

from hpclm import comm as collectives
from hpclm.compress import REGISTRY
from hpclm.compress.base import AGGREGATE_GATHER, AGGREGATE_SIGN_VOTE, AGGREGATE_SUM, Compressor, Context
from hpclm.model.params import ParamLayout
from hpclm.parallel import exchange as CP
from hpclm.parallel.onebit import OneBitAllreduce, SignScale, simulate
from hpclm.parallel.powersgd import PowerSGDReducer

MPI_SIZES = (2, 3, 4)
N = 1000


# ------------------------------------------------------------------------------- tiny compressors
class Half(Compressor):
    name, aggregate = "half", AGGREGATE_SUM

    def compress(self, grad, step=0):
        return (grad.astype(np.float16),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return payload[0].astype(ctx.dtype)

    def payload_bytes(self, n, itemsize=4):
        return 2 * n


class Dense8(Compressor):
    """gather of a dense payload through the generic decompress-and-sum (not the sparse path)."""
    name, aggregate = "dense8", AGGREGATE_GATHER

    def compress(self, grad, step=0):
        scale = np.abs(grad).max() / 127
        return (np.round(grad / scale).astype(np.int8), np.array([scale], np.float32)), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return payload[0].astype(ctx.dtype) * payload[1][0]

    def payload_bytes(self, n, itemsize=4):
        return n + 4


class Sign(Compressor):
    name, aggregate = "sign", AGGREGATE_SIGN_VOTE

    def compress(self, grad, step=0):
        return (np.packbits(grad >= 0),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return np.unpackbits(payload[0], count=ctx.n).astype(ctx.dtype) * 2 - 1

    def payload_bytes(self, n, itemsize=4):
        return (n + 7) // 8


def inputs(P, n=N, seed=0, dtype=np.float32):
    """Every rank's input, the same on every rank."""
    return [np.random.default_rng([seed, r]).standard_normal(n).astype(dtype) for r in range(P)]


def bytes_of(before, after, key):
    a, b = after.get(key, {}), before.get(key, {})
    return (a.get("bytes_sent", 0) - b.get("bytes_sent", 0), a.get("bytes_recv", 0) - b.get("bytes_recv", 0))


def _align(b):
    return (b + 7) // 8 * 8


def sparse(name, fmt, **kw):
    """The registry's topk / threshold with sparse_format `fmt`."""
    from hpclm import compress
    from hpclm.config import CompressConfig
    return compress.build(CompressConfig(name=name, sparse_format=fmt, **kw))


def sparse_arrays(fmt, k, n):
    """Bytes of each payload array for k kept float32 elements of n: compact (v16, scale, local,
    counts per 65536-element chunk), plain (values, int32 indices)."""
    return [2 * k, 4, 2 * k, 4 * -(-n // 65536)] if fmt == "compact" else [4 * k, 4 * k]


# ------------------------------------------------------------------------------- per-bucket paths
@pytest.mark.parametrize("algorithm", ["mpi", "ring"])
def test_summable_allreduce(world, algorithm):
    P, r = world.Get_size(), world.Get_rank()
    xs = inputs(P)
    comp = Half()
    expect = sum(x.astype(np.float16).astype(np.float32) for x in xs) / P     # exact: small sums of halves
    before = collectives.counters.snapshot()
    got = CP.average(world, xs[r].copy(), comp, algorithm=algorithm)
    after = collectives.counters.snapshot()
    assert_all(world, np.allclose(got, expect, rtol=1e-3, atol=1e-3), f"max |d| {np.abs(got - expect).max()}")
    assert_all(world, world.allgather(got.tobytes()) == [got.tobytes()] * P, "ranks disagree")
    if algorithm == "mpi":
        sent, recv = bytes_of(before, after, "mpi")
        want = 2 * (P - 1) * comp.payload_bytes(N) // P
        assert_all(world, (sent, recv) == (want, want), f"bytes {(sent, recv)} vs {want}")


@pytest.mark.parametrize("algorithm", ["mpi", "ring"])
@pytest.mark.parametrize("fmt", ["compact", "plain"])
@pytest.mark.parametrize("n,density", [(N, 0.05), (200003, 0.01)])        # 200003: 4 chunks, the last short
def test_gather_topk(world, algorithm, fmt, n, density):
    """Equals the sum of every rank's decompressed payload; each rank sends its payload_bytes, each
    array padded to 8 bytes, to P-1 others."""
    P, r = world.Get_size(), world.Get_rank()
    xs = inputs(P, n=n, seed=1)
    comp = sparse("topk", fmt, density=density)
    expect = sum(comp.decompress(*comp.compress(x)) for x in xs) / np.float32(P)
    before = collectives.counters.snapshot()
    got = CP.average(world, xs[r].copy(), comp, algorithm=algorithm)
    after = collectives.counters.snapshot()
    assert_all(world, np.allclose(got, expect, rtol=1e-6, atol=1e-7), f"max |d| {np.abs(got - expect).max()}")
    assert_all(world, world.allgather(got.tobytes()) == [got.tobytes()] * P, "ranks disagree")
    key = "allgather:ring" if algorithm == "ring" else "allgather:mpi"
    sent, recv = bytes_of(before, after, key)
    arrays = sparse_arrays(fmt, int(density * n), n)
    assert_all(world, sum(arrays) == comp.payload_bytes(n), f"{arrays} vs payload_bytes {comp.payload_bytes(n)}")
    payload = sum(_align(b) for b in arrays)    # compact, n = N: 208 B of arrays travel as 224
    assert_all(world, (sent, recv) == ((P - 1) * payload, (P - 1) * payload), f"{key} bytes {(sent, recv)} vs {payload}")
    sizes = bytes_of(before, after, CP.SIZES_KEY)
    assert_all(world, sizes == ((P - 1) * (len(arrays) + 1) * 8,) * 2, f"size exchange {sizes}")
    if fmt == "compact" and n > N:          # 1 %: ~4 B per element vs 8 n (P-1)/P of an fp32 all-reduce
        ratio = 2 * (P - 1) * 4 * n / P / sent
        assert_all(world, ratio > 0.99 * 200 / P, f"topk 1 % only {ratio:.1f}x fewer bytes than fp32")


@pytest.mark.parametrize("fmt", ["compact", "plain"])
def test_gather_variable_threshold(world, fmt):
    P, r = world.Get_size(), world.Get_rank()
    xs = [x * (1 + i) for i, x in enumerate(inputs(P, seed=2))]      # rank i sends ~more elements
    comp = sparse("threshold", fmt, threshold=1.5)
    expect = sum(comp.decompress(*comp.compress(x)) for x in xs) / np.float32(P)
    counts = [comp.as_sparse(comp.compress(x)[0])[0].size for x in xs]
    wire = [sum(_align(b) for b in sparse_arrays(fmt, c, N)) for c in counts]
    before = collectives.counters.snapshot()
    got = CP.average(world, xs[r].copy(), comp)
    after = collectives.counters.snapshot()
    assert_all(world, len(set(wire)) > 1, f"sizes all equal {counts}")
    assert_all(world, np.allclose(got, expect, rtol=1e-6, atol=1e-7), f"max |d| {np.abs(got - expect).max()}")
    mine = sparse_arrays(fmt, counts[r], N)
    assert_all(world, sum(mine) == comp.payload_bytes(N, count=counts[r]), f"{mine} vs payload_bytes")
    sent, recv = bytes_of(before, after, CP.ALLGATHERV_KEY)
    others = sum(w for i, w in enumerate(wire) if i != r)
    assert_all(world, (sent, recv) == ((P - 1) * wire[r], others), f"allgatherv bytes {(sent, recv)} vs {((P - 1) * wire[r], others)}")


def test_gather_dense_generic(world):
    P, r = world.Get_size(), world.Get_rank()
    xs = inputs(P, seed=3)
    comp = Dense8()
    expect = sum(comp.decompress(*comp.compress(x)) for x in xs) / np.float32(P)
    before = collectives.counters.snapshot()
    got = CP.average(world, xs[r].copy(), comp)
    after = collectives.counters.snapshot()
    assert_all(world, np.allclose(got, expect, rtol=1e-6, atol=1e-7), f"max |d| {np.abs(got - expect).max()}")
    sent, _ = bytes_of(before, after, "allgather:mpi")
    assert_all(world, sent == (P - 1) * (_align(N) + _align(4)), f"sent {sent}")


def test_sign_majority_vote(world):
    """A sign_vote compressor without majority_vote (ternary vote: 0 on ties) takes vote_allgather."""
    P, r = world.Get_size(), world.Get_rank()
    xs = inputs(P, seed=4)
    comp = Sign()
    expect = np.sign(sum(np.where(x >= 0, 1, -1) for x in xs)).astype(np.float32)
    before = collectives.counters.snapshot()
    got = CP.average(world, xs[r].copy(), comp)
    after = collectives.counters.snapshot()
    assert_all(world, np.array_equal(got, expect), f"{np.sum(got != expect)} elements differ")
    if P % 2:
        assert_all(world, np.all(np.abs(got) == 1), "odd P: no ties")
    sent, recv = bytes_of(before, after, "allgather:mpi")
    want = (P - 1) * _align(comp.payload_bytes(N))
    assert_all(world, (sent, recv) == (want, want), f"bytes {(sent, recv)} vs {want}; fp32 all-reduce "
               f"{2 * (P - 1) * 4 * N // P}")


def ieee_signs(x):
    return np.where(np.signbit(x), -1, 1)


def signed_inputs(P, n, seed):
    """inputs() with some +0.0 and -0.0 (signSGD reads the IEEE sign bit: -0.0 votes -1)."""
    xs = inputs(P, n=n, seed=seed)
    for r, x in enumerate(xs):
        x[r % 5::7] = 0.0
        x[(r + 2) % 5::11] = -0.0
    return xs


def vote_bytes(n, P):
    """Closed form of the sharded vote, each way: (P-1) blocks of L = ceil(ceil(n/8)/P) bytes in the
    all-to-all and (P-1) in the all-gather."""
    return 2 * (P - 1) * -(-((n + 7) // 8) // P)


def wire_total(before, after):
    sent = sum(v["bytes_sent"] for v in after.values()) - sum(v["bytes_sent"] for v in before.values())
    recv = sum(v["bytes_recv"] for v in after.values()) - sum(v["bytes_recv"] for v in before.values())
    return sent, recv


@pytest.mark.parametrize("n", [1000, 960, 13, 3, 1])
@pytest.mark.parametrize("algorithm", ["mpi", "ring"])
def test_signsgd_sharded_vote(world, n, algorithm):
    """signsgd's default path: all-to-all of packed-sign chunks, each rank votes its chunk, all-gather
    of the votes; equals the majority (ties -> +1) of every rank's IEEE signs, simulated here. 1000 is
    not a multiple of 8P, 960 is; 13 leaves empty chunks at P = 3, 4; 3 and 1 are n < P."""
    from hpclm.compress.signsgd import SignSGD
    P, r = world.Get_size(), world.Get_rank()
    xs = signed_inputs(P, n, seed=40 + n)
    total = sum(ieee_signs(x) for x in xs)
    expect = np.where(total >= 0, 1, -1).astype(np.float32)
    comp = SignSGD()
    assert_all(world, CP.exchange_of(comp) == "vote", CP.exchange_of(comp))
    before = collectives.counters.snapshot()
    got = CP.average(world, xs[r].copy(), comp, algorithm=algorithm)
    after = collectives.counters.snapshot()
    assert_all(world, np.array_equal(got, expect), f"{np.sum(got != expect)} of {n} elements differ")
    assert_all(world, world.allgather(got.tobytes()) == [got.tobytes()] * P, "ranks disagree")
    if n == 1000 and P % 2 == 0:
        assert_all(world, np.sum(total == 0) > 50, f"only {np.sum(total == 0)} ties")
    half = vote_bytes(n, P) // 2
    a2a = bytes_of(before, after, "alltoall:mpi" if algorithm == "mpi" else "alltoall:pairwise")
    ag = bytes_of(before, after, "allgather:mpi" if algorithm == "mpi" else "allgather:ring")
    assert_all(world, a2a == (half, half) and ag == (half, half),
               f"all-to-all {a2a}, all-gather {ag}, want {half} each")
    assert_all(world, wire_total(before, after) == (2 * half,) * 2, f"other traffic: {wire_total(before, after)}")
    if n == 960:                                           # 8P divides n: exactly 2(P-1)/P n/8, 32x < fp32
        assert_all(world, 2 * half * 8 * P == 2 * (P - 1) * n, f"{2 * half} B")
        assert_all(world, 2 * (P - 1) * 4 * n // P == 32 * 2 * half, "not 32x")


class SignTiesNegative(Compressor):
    """Packed IEEE sign bits whose majority_vote breaks ties the other way (-1): the sharded vote must
    follow the compressor's rule, not a fixed one."""
    name, aggregate = "sign_ties_negative", AGGREGATE_SIGN_VOTE

    def compress(self, grad, step=0):
        return (np.packbits(np.signbit(grad)),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return 1 - 2 * np.unpackbits(payload[0], count=ctx.n).astype(ctx.dtype)

    def payload_bytes(self, n, itemsize=4):
        return (n + 7) // 8

    def majority_vote(self, payloads, n):
        count = sum(np.unpackbits(p[0], count=n).astype(np.int32) for p in payloads)
        return (np.packbits(2 * count >= len(payloads)),)


@pytest.mark.parametrize("n", [1000, 3])
def test_sharded_vote_follows_compressor_ties(world, n):
    P, r = world.Get_size(), world.Get_rank()
    xs = signed_inputs(P, n, seed=50 + n)
    total = sum(ieee_signs(x) for x in xs)
    expect = np.where(total > 0, 1, -1).astype(np.float32)
    before = collectives.counters.snapshot()
    got = CP.average(world, xs[r].copy(), SignTiesNegative())
    after = collectives.counters.snapshot()
    assert_all(world, np.array_equal(got, expect), f"{np.sum(got != expect)} of {n} elements differ")
    assert_all(world, wire_total(before, after) == (vote_bytes(n, P),) * 2, f"bytes {wire_total(before, after)}")


def test_signsgd_vote_allgather_alternative(world):
    """The old all-gather form (exchange vote_gather) gives the same vote with (P-1) n/8 bytes each way."""
    from hpclm.compress.signsgd import SignSGD
    P, r = world.Get_size(), world.Get_rank()
    xs = signed_inputs(P, N, seed=60)
    sharded = CP.average(world, xs[r].copy(), SignSGD())
    before = collectives.counters.snapshot()
    gathered = CP.average(world, xs[r].copy(), SignSGD(), exchange="vote_gather")
    after = collectives.counters.snapshot()
    assert_all(world, np.array_equal(sharded, gathered), f"{np.sum(sharded != gathered)} elements differ")
    sent, recv = bytes_of(before, after, "allgather:mpi")
    want = (P - 1) * _align((N + 7) // 8)
    assert_all(world, (sent, recv) == (want, want), f"bytes {(sent, recv)} vs {want}")


@pytest.mark.parametrize("name", sorted(n for n, c in REGISTRY.items() if c.aggregate != "low_rank"))
def test_registry_compressors(world, name):
    """Every registry compressor (PowerSGD, low rank, has its own tests) through average(): equals
    decompress-and-sum of every rank's payload (or the majority vote), computed here from every
    rank's input."""
    from hpclm import compress
    from hpclm.config import CompressConfig
    P, r = world.Get_size(), world.Get_rank()
    xs = inputs(P, seed=5)
    cfg = CompressConfig(name=name, density=0.05)
    comps = [compress.build(cfg, rank=i) for i in range(P)]
    parts = [c.compress(x.copy(), step=3) for c, x in zip(comps, xs)]
    if comps[0].aggregate == "sign_vote":
        expect = comps[0].decompress(comps[0].majority_vote([p for p, _ in parts], N), parts[0][1])
    else:
        expect = sum(comps[0].decompress(p, ctx) for p, ctx in parts) / np.float32(P)
    got = CP.average(world, xs[r].copy(), comps[r], step=3, exchange="auto" if name != "ef_sign" else "gather")
    if name == "bf16":      # summed on the wire in bf16: one rounding (2^-8 relative) per ring step
        bound = (P - 1) * 2.0 ** -8 * sum(np.abs(comps[0].decompress(p, ctx)) for p, ctx in parts) / P
        ok = np.all(np.abs(got - expect) <= bound + 1e-7)
    else:
        ok = np.allclose(got, expect, rtol=1e-3, atol=1e-3)
    assert_all(world, ok, f"{name}: max |d| {np.abs(got - expect).max()}")


# ------------------------------------------------------------------------------- 1-bit all-reduce
@pytest.mark.parametrize("n", [1000, 37])
def test_onebit_allreduce(world, n):
    P, r = world.Get_size(), world.Get_rank()
    ob = OneBitAllreduce(n, P, np.float32)
    worker = [np.zeros(ob.N, np.float32) for _ in range(P)]
    server = [np.zeros(ob.k, np.float32) for _ in range(P)]
    for call in range(3):                                            # error buffers carry over
        xs = inputs(P, n=n, seed=10 + call)
        expect = simulate(xs, worker, server)
        before = collectives.counters.snapshot()
        got = ob.allreduce(world, xs[r].copy())
        after = collectives.counters.snapshot()
        assert_all(world, np.allclose(got, expect, rtol=1e-5, atol=1e-6), f"call {call}: max |d| {np.abs(got - expect).max()}")
        assert_all(world, np.allclose(ob.worker_error, worker[r], rtol=1e-5, atol=1e-6), "worker error")
        assert_all(world, np.allclose(ob.server_error, server[r], rtol=1e-5, atol=1e-6), "server error")
        assert_all(world, world.allgather(got.tobytes()) == [got.tobytes()] * P, "ranks disagree")
        chunk = _align(SignScale().payload_bytes(ob.k) - 4) + 8      # bits (aligned) + scale (aligned)
        a2a = bytes_of(before, after, "alltoall:mpi")
        ag = bytes_of(before, after, "allgather:mpi")
        assert_all(world, a2a == ((P - 1) * chunk,) * 2 and ag == ((P - 1) * chunk,) * 2, f"bytes {a2a} {ag} chunk {chunk}")
    if n == 1000:
        ratio = 2 * (P - 1) * 4 * n / P / ob.wire_bytes()
        assert_all(world, ratio > 20, f"1-bit ratio vs fp32 all-reduce only {ratio:.1f}")


def test_onebit_through_average(world):
    P, r = world.Get_size(), world.Get_rank()
    ob = OneBitAllreduce(N, P, np.float64)
    xs = inputs(P, seed=20, dtype=np.float64)
    expect = simulate(xs, [np.zeros(ob.N) for _ in range(P)], [np.zeros(ob.k) for _ in range(P)])
    got = CP.average(world, xs[r].copy(), ob, exchange="onebit")
    assert_all(world, np.allclose(got, expect, rtol=1e-12), f"max |d| {np.abs(got - expect).max()}")


# ------------------------------------------------------------------------------- PowerSGD
SHAPES = [("a", (12, 10)), ("b", (10,)), ("c", (6, 20)), ("d", (2, 3)), ("e", (40, 30))]


def powersgd_simulation(grads_per_step, layout, q0, rank):
    """Independent NumPy PowerSGD on all ranks' gradients (per step: list over ranks of flat arrays)."""
    P = len(grads_per_step[0])
    mats = [s for s in layout.slots if len(s.shape) == 2 and min(rank, *s.shape) * sum(s.shape) < s.size]
    q, at = {}, 0
    for s in mats:
        rr = min(rank, *s.shape)
        q[s.name] = q0[at:at + s.shape[1] * rr].reshape(s.shape[1], rr).copy()
        at += s.shape[1] * rr
    err = {(r, s.name): np.zeros(s.shape) for r in range(P) for s in mats}
    outs = []
    for grads in grads_per_step:
        out = np.mean(grads, axis=0)                                      # uncompressed slots
        for s in mats:
            M = [grads[r][s.offset:s.offset + s.size].reshape(s.shape) + err[(r, s.name)] for r in range(P)]
            p = np.mean([m @ q[s.name] for m in M], axis=0)
            p, _ = np.linalg.qr(p)
            q[s.name] = np.mean([m.T @ p for m in M], axis=0)
            approx = p @ q[s.name].T
            for r in range(P):
                err[(r, s.name)] = M[r] - approx
            out[s.offset:s.offset + s.size] = approx.reshape(-1)
        outs.append(out)
    return outs, err, mats


@pytest.mark.parametrize("algorithm", ["mpi", "ring"])
def test_powersgd(world, algorithm):
    P, r = world.Get_size(), world.Get_rank()
    layout = ParamLayout(SHAPES)
    ps = PowerSGDReducer(layout, np.float64, rank=4, seed=3)
    q0 = ps.q_buf.copy()
    steps = [inputs(P, n=layout.size, seed=30 + s, dtype=np.float64) for s in range(3)]
    expect, err, mats = powersgd_simulation(steps, layout, q0, 4)
    assert_all(world, [s.name for s in mats] == ["a", "c", "e"], [s.name for s in mats])
    for s, grads in enumerate(steps):
        before = collectives.counters.snapshot()
        got = ps.step(world, grads[r].copy(), algorithm=algorithm)
        after = collectives.counters.snapshot()
        assert_all(world, np.allclose(got, expect[s], rtol=1e-9, atol=1e-11), f"step {s}: max |d| {np.abs(got - expect[s]).max()}")
        assert_all(world, world.allgather(got.tobytes()) == [got.tobytes()] * P, "ranks disagree")
        calls = sum(v["calls"] for v in after.values()) - sum(v["calls"] for v in before.values())
        assert_all(world, calls == 3, f"{calls} collectives (P, Q, uncompressed slots)")
        if algorithm == "mpi":
            sent, _ = bytes_of(before, after, "mpi")
            elems = ps.factor_elements() + ps.rest_size
            per = lambda e: 2 * (P - 1) * 8 * e // P  # noqa: E731
            want = per(ps.p_buf.size) + per(ps.q_buf.size) + per(ps.rest_size)
            assert_all(world, sent == want, f"sent {sent} vs {want} ({elems} elements)")
    for s in mats:
        e = ps.error[ps.e_offsets[[m.name for m, _ in ps.mats].index(s.name)]:][:s.size].reshape(s.shape)
        assert_all(world, np.allclose(e, err[(r, s.name)], rtol=1e-9, atol=1e-11), f"error {s.name}")


def test_powersgd_char_model_ratio(world):
    """rank 4 on the char model's matrices (n_embd 128, 4 layers, V 65): measured bytes ratio."""
    from hpclm.config import ModelConfig
    from hpclm.model.params import gpt2_shapes
    P, r = world.Get_size(), world.Get_rank()
    layout = ParamLayout(gpt2_shapes(ModelConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)))
    ps = PowerSGDReducer(layout, np.float32, rank=4, seed=0)
    grad = np.random.default_rng([7, r]).standard_normal(layout.size).astype(np.float32)
    before = collectives.counters.snapshot()
    ps.step(world, grad, algorithm="mpi")
    after = collectives.counters.snapshot()
    sent, _ = bytes_of(before, after, "mpi")
    rest_bytes = 2 * (P - 1) * 4 * ps.rest_size // P
    fp32_matrices = 2 * (P - 1) * 4 * ps.matrix_elements() // P
    ratio = fp32_matrices / (sent - rest_bytes)
    assert_all(world, 22 < ratio < 25, f"ratio {ratio:.2f}")
    if r == 0:
        print(f"\npowersgd rank 4, char model matrices: {ps.matrix_elements()} elements, "
              f"{ps.factor_elements()} in P+Q: {ratio:.1f}x fewer bytes than fp32")
