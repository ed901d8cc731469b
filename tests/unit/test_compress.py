"""Compressor contract: round trips, error bounds, unbiasedness, payload sizes, error feedback."""
import dataclasses

import numpy as np
import pytest

from hpclm.compress import REGISTRY, build, build_with_memory, ErrorFeedback
from hpclm.compress import rng, sparse_code
from hpclm.compress.base import payload_nbytes
from hpclm.compress.bits import CHUNK, pack_codes, pack_signs, unpack_codes, unpack_signs
from hpclm.compress.memory import EF_AUTO, wants_memory
from hpclm.compress.powersgd import (approximate, compute_p, compute_q, matrix_shape, orthogonalize,
                                     powersgd_bytes)
from hpclm.compress.randomk import random_indices
from hpclm.compress.signsgd import majority_vote
from hpclm.config import CompressConfig
from hpclm.errors import UserError
from hpclm.parallel.exchange import combine_sum

SIZES = [0, 1, 7, 31, 32, 33, 1000, 4099]


def grad(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def cfg(name, **kw):
    c = CompressConfig(name=name, **kw)
    c.validate()
    return c


def roundtrip(name, g, step=0, **kw):
    c = build(cfg(name, **kw))
    p, ctx = c.compress(g, step)
    return c, p, c.decompress(p, ctx)


def test_registry_names_and_unknown():
    assert set(REGISTRY) == {"none", "fp16", "bf16", "int8", "qsgd", "terngrad", "signsgd", "ef_sign",
                             "topk", "randomk", "threshold", "powersgd", "kmeans"}
    with pytest.raises(UserError, match="valid names: .*signsgd"):
        build(CompressConfig(name="nope"))
    for name, cls in REGISTRY.items():
        assert cls.name == name and cls.aggregate in ("sum", "gather", "sign_vote", "low_rank")
        assert "bytes" in cls.__doc__ or "bytes" in __import__(cls.__module__, fromlist=["x"]).__doc__


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("n", SIZES)
def test_payload_bytes_match_nbytes_and_shape(name, n):
    g = grad(n, n)
    c, p, d = roundtrip(name, g, step=2)
    kw = {"count": p[0].size} if name == "threshold" else {}
    assert payload_nbytes(p) == c.payload_bytes(n, **kw)
    assert d.shape == (n,) and d.dtype == np.float32
    assert np.isfinite(d).all()


@pytest.mark.parametrize("name", ["topk", "threshold"])
@pytest.mark.parametrize("fmt", ["compact", "plain"])
@pytest.mark.parametrize("n", SIZES + [65536, 200003])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_payload_bytes_both_formats(name, fmt, n, dtype):
    g = grad(n, n).astype(dtype)
    c = build(cfg(name, sparse_format=fmt, threshold=1.0))
    p, ctx = c.compress(g)
    k = c.as_sparse(p)[0].size
    kw = {"count": k} if name == "threshold" else {}
    assert payload_nbytes(p) == c.payload_bytes(n, itemsize=g.itemsize, **kw)
    assert c.payload_bytes(n, itemsize=g.itemsize, **kw) == (4 * k + 4 + 4 * -(-n // 65536) if fmt == "compact"
                                                             else k * (g.itemsize + 4))
    d = c.decompress(p, ctx)
    assert d.shape == (n,) and d.dtype == dtype


def test_payload_byte_formulas():
    n = 1000
    k = 10
    assert build(cfg("none")).payload_bytes(n) == 4000
    assert build(cfg("fp16")).payload_bytes(n) == 2000 == build(cfg("bf16")).payload_bytes(n)
    assert build(cfg("int8", block=256)).payload_bytes(n) == 1000 + 4 * 4
    assert build(cfg("qsgd", levels=16)).payload_bytes(n) == 4 + 750  # 33 codes -> 6 bits
    assert build(cfg("qsgd", levels=1)).payload_bytes(n) == 4 + 250   # 3 codes -> 2 bits
    assert build(cfg("terngrad")).payload_bytes(n) == 4 + 250
    assert build(cfg("signsgd")).payload_bytes(n) == 125
    assert build(cfg("ef_sign")).payload_bytes(n) == 129
    assert build(cfg("topk", density=0.01)).payload_bytes(n) == 4 * k + 4 + 4           # compact: one chunk
    assert build(cfg("topk", density=0.01, sparse_format="plain")).payload_bytes(n) == k * 8
    assert build(cfg("topk", density=0.01, sparse_format="plain")).payload_bytes(n, itemsize=8) == k * 12
    assert build(cfg("topk", density=0.01)).payload_bytes(809856) == 4 * 8098 + 4 + 4 * 13
    assert build(cfg("randomk", density=0.01)).payload_bytes(n) == k * 4
    assert build(cfg("threshold")).payload_bytes(n, count=7) == 28 + 4 + 4
    assert build(cfg("threshold", sparse_format="plain")).payload_bytes(n, count=7) == 56
    assert build(cfg("kmeans", clusters=16)).payload_bytes(n) == 500 + 64
    assert build(cfg("kmeans", clusters=8)).payload_bytes(n) == 375 + 32
    assert powersgd_bytes((100, 30), 4, 4) == 130 * 4 * 4
    assert build(cfg("powersgd", powersgd_rank=2)).payload_bytes(n) == powersgd_bytes(matrix_shape(n), 2, 4)


def test_none_and_fp16_exact():
    g = grad(1000)
    assert np.array_equal(roundtrip("none", g)[2], g)
    rep = g.astype(np.float16).astype(np.float32)  # representable in half precision
    assert np.array_equal(roundtrip("fp16", rep)[2], rep)
    assert not np.array_equal(roundtrip("fp16", g)[2], g)


def test_bf16_relative_error_and_rounding():
    g = grad(10000) * np.float32(1e3)
    d = roundtrip("bf16", g)[2]
    assert np.all(np.abs(d - g) <= np.abs(g) * 2.0 ** -8)
    # round to nearest even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> 1
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, np.nan, -2.5], np.float32)
    d = roundtrip("bf16", x)[2]
    assert d[0] == 1.0 and d[1] == 1 + 2 ** -6 and np.isnan(d[2]) and d[3] == -2.5


@pytest.mark.parametrize("n,block", [(1000, 256), (4099, 64), (5, 256)])
def test_int8_error_within_half_scale(n, block):
    g = grad(n) * np.linspace(0.01, 10, n).astype(np.float32)
    c, (q, s), d = roundtrip("int8", g, block=block)
    bound = np.repeat(s, block)[:n] / 2
    assert np.all(np.abs(d - g) <= bound * (1 + 1e-5))
    assert np.abs(q).max() == 127
    z = np.zeros(300, np.float32)
    assert np.array_equal(roundtrip("int8", z)[2], z)


def unbiased(name, g, trials=400, **kw):
    c = build(cfg(name, **kw))
    acc = np.zeros_like(g, dtype=np.float64)
    sq = np.zeros_like(acc)
    for step in range(trials):
        p, ctx = c.compress(g, step)
        d = c.decompress(p, ctx).astype(np.float64)
        acc += d
        sq += d * d
    mean = acc / trials
    se = np.sqrt(np.maximum(sq / trials - mean ** 2, 1e-30) / trials)
    z = np.abs(mean - g) / np.maximum(se, 1e-12)
    return z, mean


@pytest.mark.parametrize("name,kw", [("qsgd", {"levels": 4}), ("terngrad", {})])
def test_unbiased(name, kw):
    g = grad(64, 3)
    z, mean = unbiased(name, g, **kw)
    assert np.mean(z) < 1.5 and np.max(z) < 5.0
    assert np.abs(mean - g).max() < 0.25 * np.abs(g).max()


def test_stochastic_reproducible_and_salted():
    g = grad(500)
    a = build(cfg("qsgd"), rank=0).compress(g, 5)[0][1]
    b = build(cfg("qsgd"), rank=0).compress(g, 5)[0][1]
    c = build(cfg("qsgd"), rank=1).compress(g, 5)[0][1]
    d = build(cfg("qsgd"), rank=0).compress(g, 6)[0][1]
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)


def test_rng_uniform_range_and_splitmix_reference():
    # SplitMix64 reference: state 0 -> first output 0xE220A8397B1DCDAF
    assert int(rng.hash64(0, 1)[0]) == 0xE220A8397B1DCDAF
    u = rng.uniform(rng.stream_key(1, 2, 3), 100000)
    assert u.dtype == np.float32 and u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert np.array_equal(rng.uniform(7, 10, offset=5), rng.uniform(7, 15)[5:])


def test_signs_pack_like_packbits_and_unpack():
    g = grad(1001)
    g[3] = -0.0
    p = pack_signs(g)
    assert np.array_equal(p, np.packbits(np.signbit(g)))
    d = unpack_signs(p, g.size, 0.5)
    assert np.array_equal(d, np.where(np.signbit(g), -0.5, 0.5).astype(np.float32))
    big = grad(700001)
    assert np.array_equal(pack_signs(big), np.packbits(big < 0))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1003, 3 * CHUNK + 5])        # partial groups, several chunks
def test_pack_codes_roundtrip(bits, n):
    codes = np.random.default_rng(bits).integers(0, 1 << bits, n).astype(np.uint8)
    p = pack_codes(codes, bits)
    assert p.size == (n * bits + 7) // 8
    assert np.array_equal(unpack_codes(p, n, bits), codes)
    ref = np.packbits(np.unpackbits(codes[:, None], axis=1)[:, 8 - bits:].ravel())     # bit planes, MSB first
    assert np.array_equal(p, ref)


def test_signsgd_and_majority_vote():
    g = grad(100)
    c, p, d = roundtrip("signsgd", g)
    assert np.array_equal(d, np.where(g < 0, -1, 1))
    votes = [np.array([1, 1, -1, -1, 1], np.float32), np.array([1, -1, -1, 1, -1], np.float32),
             np.array([-1, -1, -1, 1, 1], np.float32), np.array([1, 1, 1, -1, -1], np.float32)]
    packed = [c.compress(v)[0] for v in votes]
    res = c.decompress(c.majority_vote(packed, 5), c.compress(votes[0])[1])
    assert np.array_equal(res, [1, 1, -1, 1, 1])  # 2-2 ties -> +1
    assert np.array_equal(unpack_signs(majority_vote(packed[:3], 5), 5), [1, -1, -1, 1, 1])


def test_ef_sign_scale_is_mean_abs():
    g = grad(1000)
    _, p, d = roundtrip("ef_sign", g)
    assert np.isclose(p[1][0], np.abs(g).mean(), rtol=1e-6)
    assert np.allclose(np.abs(d), np.abs(g).mean())


@pytest.mark.parametrize("method", ["exact", "sampled"])
@pytest.mark.parametrize("fmt", ["compact", "plain"])
def test_topk_keeps_k_largest(method, fmt):
    g = grad(20000)
    c, p, d = roundtrip("topk", g, density=0.01, topk_method=method, sparse_format=fmt)
    v, i = c.as_sparse(p)
    k = 200
    assert v.size == k and i.dtype == (np.int32 if fmt == "plain" else np.int64) and np.all(np.diff(i) > 0)
    assert set(i.tolist()) == set(np.argsort(-np.abs(g))[:k].tolist())
    assert np.array_equal(d[i], v) and np.count_nonzero(d) == k
    if fmt == "plain":
        assert np.array_equal(v, g[i])
    else:
        assert np.all(np.abs(v - g[i]) <= fp16_error_bound(g[i], p[1][0]))


@pytest.mark.parametrize("case", ["normal", "zeros", "ties", "constant", "tiny", "heavy_tail"])
def test_topk_sampled_selects_the_exact_set(case):
    """DGC's sampled threshold (the default) returns select_topk's set, ties by lowest index, on data
    that defeats the sample: mostly zeros, few distinct values, all equal, tiny n, a heavy tail."""
    from hpclm.compress import rng
    from hpclm.compress.topk import select_topk, select_topk_sampled
    r = np.random.default_rng(7)
    n = 5 if case == "tiny" else 50000
    a = {"normal": r.standard_normal(n), "zeros": np.where(r.random(n) < 0.995, 0.0, r.random(n)),
         "ties": r.integers(0, 4, n).astype(float), "constant": np.ones(n), "tiny": r.random(n),
         "heavy_tail": r.standard_cauchy(n)}[case]
    a = np.abs(a).astype(np.float32)
    for k in sorted({1, 2, n // 1000, n // 100, n // 3, n - 1}):
        for step in range(3):
            got = select_topk_sampled(a, k, rng.stream_key(0, step, 0), np)
            assert np.array_equal(np.sort(got), select_topk(a, k, np)), (case, k, step)


@pytest.mark.parametrize("fmt", ["compact", "plain"])
def test_topk_ties_by_lowest_index(fmt):
    g = np.array([1, -3, 3, 0, 3, 2], np.float32)
    c, p, _ = roundtrip("topk", g, density=0.5, sparse_format=fmt)
    assert c.as_sparse(p)[1].tolist() == [1, 2, 4]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plain_format_is_the_old_payload(dtype):
    """sparse_format = "plain": exactly (values (k,) in the gradient dtype, int32 indices (k,) ascending)."""
    g = grad(5000).astype(dtype)
    top = np.sort(np.argsort(-np.abs(g))[:50]).astype(np.int32)
    over = np.flatnonzero(np.abs(g) > 2.0).astype(np.int32)
    for name, idx in (("topk", top), ("threshold", over)):
        c = build(cfg(name, density=0.01, threshold=2.0, sparse_format="plain"))
        p, _ = c.compress(g)
        assert len(p) == 2 and p[0].dtype == dtype and p[1].dtype == np.int32
        assert np.array_equal(p[0], g[idx]) and np.array_equal(p[1], idx)
        assert c.as_sparse(p) is p
        compact = build(cfg(name, density=0.01, threshold=2.0)).compress(g)[0]
        assert [a.dtype for a in compact] == [np.float16, np.float32, np.uint16, np.int32]
        assert np.array_equal(sparse_code.decode(compact)[1], idx)


def test_sparse_format_validated():
    with pytest.raises(UserError, match="compress.sparse_format must be compact or plain, got 'dense'"):
        cfg("topk", sparse_format="dense")


@pytest.mark.parametrize("clusters", [1, 12, 512])
def test_kmeans_clusters_validated(clusters):
    with pytest.raises(UserError, match=f"power of two in \\[2, 256\\].*got {clusters}"):
        cfg("kmeans", clusters=clusters)


def test_randomk_shared_indices():
    n = 10000
    a = random_indices(n, 100, seed=3, step=7)
    b = random_indices(n, 100, seed=3, step=7)
    c = random_indices(n, 100, seed=3, step=8)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and len(set(a.tolist())) == 100
    g0, g1 = grad(n, 0), grad(n, 1)
    r0, r1 = build(cfg("randomk"), rank=0), build(cfg("randomk"), rank=1)
    (p0,), c0 = r0.compress(g0, 7)
    (p1,), c1 = r1.compress(g1, 7)
    assert np.array_equal(c0.extra, c1.extra)
    total = r0.decompress(r0.combine((p0,), (p1,)), r0.context(n, np.float32, 7))
    assert np.allclose(total[c0.extra], (g0 + g1)[c0.extra]) and np.count_nonzero(total) == 100


@pytest.mark.parametrize("fmt", ["compact", "plain"])
def test_threshold_selects_above(fmt):
    g = grad(5000) * np.float32(1e-3)
    c, p, d = roundtrip("threshold", g, threshold=1e-3, sparse_format=fmt)
    v, i = c.as_sparse(p)
    assert np.array_equal(np.flatnonzero(np.abs(g) > 1e-3), i)
    assert np.array_equal(d[i], v) and np.count_nonzero(d) == i.size
    if fmt == "plain":
        assert np.array_equal(v, g[i])
    else:
        assert np.all(np.abs(v - g[i]) <= fp16_error_bound(g[i], p[1][0]))



def sparse_case(n, k, seed=0, chunks=None):
    """k ascending int32 indices out of n (only inside the given 65536-element chunks, if named)
    and standard normal float32 values for them."""
    r = np.random.default_rng([seed, n, k])
    pool = np.arange(n) if chunks is None else np.concatenate([np.arange(c << 16, min(n, (c + 1) << 16)) for c in chunks])
    idx = np.sort(r.choice(pool, k, replace=False)).astype(np.int32)
    return r.standard_normal(k).astype(np.float32), idx


def fp16_error_bound(values, scale):
    """What float16 of values / scale, multiplied back in float32, may be off by: 2**-11 relative
    (11 significant bits) where |v| / scale is in float16's normal range [2**-14, 2**15], times
    (1 + 2**-11) for the two float32 roundings (divide, multiply); below it, half the subnormal
    step (2**-25) times scale, so scale * 2**-24 covers both cases with room."""
    return 2.0 ** -11 * (1 + 2.0 ** -11) * np.abs(values) + 2.0 ** -24 * scale


@pytest.mark.parametrize("n,k,chunks", [
    (1000, 10, None),                      # n < 65536: one chunk
    (1000, 1000, None),
    (65536, 65536, None),                  # density 1: one chunk holding 65536 elements
    (200003, 2000, None),                  # n not a multiple of 65536: 4 chunks, the last short
    (5 * 65536 + 17, 3000, [0, 3]),        # chunks 1, 2, 4 and 5 empty
    (5 * 65536 + 17, 1, [5]),              # one element, in the short last chunk
    (1000, 0, None),                       # k == 0
    (0, 0, None),
])
def test_sparse_code_round_trip(n, k, chunks):
    values, idx = sparse_case(n, k, chunks=chunks)
    p = sparse_code.encode(values, idx, n)
    v16, scale, local, counts = p
    C = -(-n // 65536)
    assert [a.dtype for a in p] == [np.float16, np.float32, np.uint16, np.int32]
    assert [a.shape for a in p] == [(k,), (1,), (k,), (C,)]
    assert payload_nbytes(p) == sparse_code.nbytes(k, n) == 4 * k + 4 + 4 * C
    assert np.array_equal(counts, np.bincount(idx >> 16, minlength=C)) and np.array_equal(local, idx % 65536)
    got_v, got_i = sparse_code.decode(p)
    assert got_i.dtype == np.int64 and got_v.dtype == np.float32
    assert np.array_equal(got_i, idx)
    if k == 0:
        assert scale[0] == 1 and got_v.size == 0
        return
    top = np.abs(values).max()
    assert scale[0] == top / 2 ** 15 and np.abs(v16).max() == 2 ** 15           # the largest travels exactly
    assert got_v[np.argmax(np.abs(values))] == values[np.argmax(np.abs(values))]
    assert np.all(np.abs(got_v - values) <= fp16_error_bound(values, scale[0]))


def test_sparse_code_wide_range_and_zeros():
    """Magnitudes from max down to max * 2**-45: float16 normals (relative bound), subnormals and
    flushed-to-zero ones (absolute bound); all-zero values travel with scale 1."""
    n, k = 100000, 4000
    r = np.random.default_rng(7)
    _, idx = sparse_case(n, k)
    values = (r.choice([-1, 1], k) * 3.0 * 2.0 ** -r.uniform(0, 45, k)).astype(np.float32)
    p = sparse_code.encode(values, idx, n)
    got_v, got_i = sparse_code.decode(p)
    scale = p[1][0]
    assert np.array_equal(got_i, idx)
    assert np.all(np.abs(got_v - values) <= fp16_error_bound(values, scale))
    normal = np.abs(values) >= scale * 2.0 ** -14
    assert 0 < normal.sum() < k and np.any(got_v[~normal] == 0)                  # both regimes hit
    zeros = sparse_code.encode(np.zeros(5, np.float32), idx[:5], n)
    assert zeros[1][0] == 1 and not zeros[0].any()
    assert np.array_equal(sparse_code.decode(zeros)[1], idx[:5]) and not sparse_code.decode(zeros)[0].any()

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_nearest_codes_equal_searchsorted(dtype):
    """The comparison count equals searchsorted on the midpoints (ties, NaN, both signs of zero,
    values on a midpoint, several chunks)."""
    from hpclm.compress.kmeans import nearest_codes
    midpoints = grad(15)
    midpoints[3] = midpoints[4] = np.float32(0.0)                               # a repeated midpoint
    midpoints.sort()
    g = grad(3 * CHUNK + 11).astype(dtype)
    g[::97], g[1::89], g[2::83], g[3::79] = np.nan, -0.0, midpoints[7], np.inf
    assert np.array_equal(nearest_codes(g, midpoints), np.searchsorted(midpoints, g).astype(np.uint8))


@pytest.mark.parametrize("margin", [6, -1000])                                  # -1000: every cut falls short
def test_randomk_indices_are_the_k_smallest_hashes(monkeypatch, margin):
    from hpclm.compress import randomk, rng
    monkeypatch.setattr(randomk, "MARGIN_SIGMAS", margin)
    for n in (1, 10, 1000, 3 * CHUNK + 7):
        h = rng.hash64(rng.stream_key(5, 3, 0), n)
        for k in sorted({0, 1, n // 100, n // 2, n - 1, n}):
            want = np.sort(np.argsort(h, kind="stable")[:k]).astype(np.int32)
            assert np.array_equal(randomk.random_indices(n, k, 5, 3), want), (n, k)


def test_kmeans_error_bounded_and_exact_on_few_values():
    g = grad(10000)
    c, p, d = roundtrip("kmeans", g, clusters=16)
    assert np.abs(d - g).max() <= g.max() - g.min()
    assert np.abs(d - g).mean() < 0.2 * np.abs(g).mean()
    few = np.repeat(np.array([-2, -1, 0.5, 3], np.float32), 50)
    assert np.allclose(roundtrip("kmeans", few, clusters=4)[2], few)


def test_powersgd_math():
    r = np.random.default_rng(0)
    low = (r.standard_normal((40, 2)) @ r.standard_normal((2, 30))).astype(np.float64)
    q = orthogonalize(r.standard_normal((30, 2)))
    for _ in range(2):  # warm-started power iterations recover an exactly rank-2 matrix
        p = orthogonalize(compute_p(low, q))
        q = compute_q(low, p)
    assert np.allclose(approximate(p, q), low, atol=1e-8)
    gs = orthogonalize(r.standard_normal((50, 3)), "gram_schmidt")
    assert np.allclose(gs.T @ gs, np.eye(3), atol=1e-6)
    c = build(cfg("powersgd", powersgd_rank=2))
    g = grad(1000)
    e1 = np.linalg.norm(c.decompress(*c.compress(g)) - g)
    e2 = np.linalg.norm(c.decompress(*c.compress(g)) - g)  # warm start improves the same matrix
    assert e2 <= e1 + 1e-5
    st = c.state_dict()
    c2 = build(cfg("powersgd", powersgd_rank=2))
    c2.load_state_dict(st)
    assert np.array_equal(c2.compress(g)[0][0], c.compress(g)[0][0])


@pytest.mark.parametrize("n", [1, 12, 16, 17, 1000, 1024])
def test_powersgd_matrix_is_the_zero_padded_gradient(n):
    """The flat gradient as its (m, k) matrix: the gradient itself where m k = n (12, 16, 1024), zero-padded
    otherwise; the payload equals the steps on an explicitly zero-padded copy, and the gradient is unchanged."""
    from hpclm.compress.powersgd import init_q, matrix_shape
    g = grad(n)
    before = g.copy()
    (p, q), _ = build(cfg("powersgd", powersgd_rank=2)).compress(g)
    m, k = matrix_shape(n)
    padded = np.zeros(m * k, g.dtype)
    padded[:n] = g
    padded = padded.reshape(m, k)
    p_ref = orthogonalize(compute_p(padded, init_q(k, min(2, m, k), 0, g.dtype)))
    assert np.array_equal(p, p_ref) and np.array_equal(q, compute_q(padded, p_ref))
    assert np.array_equal(g, before)
    c = build(cfg("powersgd", powersgd_rank=2))
    payload, ctx = c.compress(g)
    out = np.full(n, np.nan, np.float32)
    assert c.decompress(payload, ctx, out=out) is out
    assert np.array_equal(out, c.decompress(payload, ctx))
    assert np.array_equal(out, approximate(p, q).reshape(-1)[:n])


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_error_feedback_conserves_signal(name):
    n = 3001
    ef = ErrorFeedback(build(cfg(name, error_feedback="on")), n, np.float32)
    prev = np.zeros(n, np.float32)
    for step in range(3):
        g = grad(n, step)
        p, ctx = ef.compress(g, step)
        sent = ef.decompress(p, ctx)
        np.testing.assert_allclose(sent + ef.residual, g + prev, rtol=0, atol=1e-5 * (1 + np.abs(g + prev).max()))
        prev = ef.residual.copy()


@pytest.mark.parametrize("fmt", ["compact", "plain"])
def test_error_feedback_momentum_and_masking(fmt):
    n = 1000
    c = cfg("topk", momentum_correction=True, factor_masking=True, momentum=0.5, sparse_format=fmt)
    ef = build_with_memory(c, n, np.float32)
    g = grad(n)
    p1, _ = ef.compress(g)
    v1, i1 = ef.as_sparse(p1)
    sent1 = np.isin(np.arange(n), i1)
    assert np.array_equal(i1, np.sort(np.argsort(-np.abs(g))[:10]))
    if fmt == "plain":
        assert np.array_equal(v1, g[i1]) and np.all(ef.residual[sent1] == 0)
    assert np.all(ef.velocity[sent1] == 0) and np.array_equal(ef.velocity[~sent1], g[~sent1])
    assert np.array_equal(ef.residual[sent1], g[sent1] - v1) and np.array_equal(ef.residual[~sent1], g[~sent1])
    r1 = ef.residual.copy()
    p2, _ = ef.compress(g)
    v2, i2 = ef.as_sparse(p2)
    # u = 0.5 u + g: g where masked, 1.5 g elsewhere; e += u
    expect_acc = r1 + np.where(sent1, g, np.float32(0.5) * g + g)
    if fmt == "plain":
        assert np.allclose(v2, expect_acc[i2])
    else:
        assert np.all(np.abs(v2 - expect_acc[i2]) <= fp16_error_bound(expect_acc[i2], p2[1][0]))
    off = build_with_memory(dataclasses.replace(c, factor_masking=False), n, np.float32)
    off.compress(g)
    assert np.count_nonzero(off.velocity) == n


@pytest.mark.parametrize("name", ["topk", "threshold"])
@pytest.mark.parametrize("fmt", ["compact", "plain"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_error_feedback_residual_is_exact(name, fmt, dtype):
    """e = acc - D(C(acc)) to the bit: the fused subtract_sent (plain: sent entries zeroed; compact:
    decoded values subtracted, so their float16 rounding error stays in e)."""
    n = 70000                                                  # two chunks
    ef = build_with_memory(cfg(name, density=0.01, threshold=1.5, sparse_format=fmt), n, dtype)
    assert isinstance(ef, ErrorFeedback)
    for step in range(3):
        g = grad(n, step).astype(dtype)
        acc = ef.residual + g
        p, ctx = ef.compress(g, step)
        assert np.array_equal(ef.residual, acc - ef.decompress(p, ctx))
        i = ef.sent_indices(p, ctx)
        assert np.array_equal(i, ef.as_sparse(p)[1]) and i.size > 0
        if fmt == "plain":
            assert np.all(ef.residual[i] == 0)
        else:
            assert np.count_nonzero(ef.residual[i]) > i.size // 2


@pytest.mark.parametrize("fmt", ["compact", "plain"])
def test_combine_sum_scatter_adds_through_error_feedback(monkeypatch, fmt):
    """combine_sum takes its one-bincount path for a compressor with as_sparse, also wrapped in
    ErrorFeedback (which forwards it): decompress is never called, and the sum of overlapping
    payloads equals the sum of their decompressions."""
    n, P = 70000, 3
    base = grad(n, 99)
    efs = [build_with_memory(cfg("topk", density=0.01, sparse_format=fmt), n, np.float32) for _ in range(P)]
    parts = [ef.compress(base + np.float32(0.3) * grad(n, r)) for r, ef in enumerate(efs)]
    expect = sum(ef.decompress(p, ctx) for ef, (p, ctx) in zip(efs, parts))
    assert np.count_nonzero(expect) < sum(ef.as_sparse(p)[1].size for ef, (p, _) in zip(efs, parts))  # overlap

    def no_decompress(payload, ctx):
        raise AssertionError("combine_sum decompressed a sparse payload")

    monkeypatch.setattr(efs[0].compressor, "decompress", no_decompress)
    out = combine_sum(efs[0], [p for p, _ in parts], parts[0][1], np.empty(n, np.float32))
    np.testing.assert_allclose(out, expect, rtol=1e-6, atol=0)


def test_error_feedback_state_dict_roundtrip():
    n = 500
    c = cfg("ef_sign", momentum_correction=True)
    a = build_with_memory(c, n, np.float32)
    for s in range(3):
        a.compress(grad(n, s), s)
    b = build_with_memory(c, n, np.float32)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.residual, b.residual) and np.array_equal(a.velocity, b.velocity)
    pa, pb = a.compress(grad(n, 9), 9)[0], b.compress(grad(n, 9), 9)[0]
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb))


def test_auto_memory_choice():
    for name in REGISTRY:
        wrapped = isinstance(build_with_memory(cfg(name), 10, np.float32), ErrorFeedback)
        assert wrapped == (name in EF_AUTO)
    assert wants_memory(cfg("int8", error_feedback="on")) and not wants_memory(cfg("topk", error_feedback="off"))
    assert EF_AUTO == {"ef_sign", "topk", "randomk", "threshold", "powersgd", "kmeans"}


def test_wire_sums_round_the_float32_sum():
    """bf16_sum / add_halves (fp16's wire_sum): the float32 sum of the two decoded payloads, rounded to nearest even
    once (not an integer sum of the bits, not a half-precision addition)."""
    from hpclm.compress.bf16 import bf16_sum, from_bf16_bits, to_bf16_bits
    from hpclm.compress.half import CHUNK, add_halves
    n = 2 * CHUNK + 77                                                         # both sum in chunks: two and a tail
    a, b = grad(n), grad(n)[::-1].copy() * np.float32(3)
    acc = to_bf16_bits(a)
    exact = from_bf16_bits(acc) + from_bf16_bits(to_bf16_bits(b))               # float32 sum
    bf16_sum(acc, to_bf16_bits(b))
    got = from_bf16_bits(acc)
    assert np.all(np.abs(got - exact) <= np.abs(exact) * 2.0 ** -8)
    assert np.all(acc == to_bf16_bits(exact))
    one, tie = to_bf16_bits(np.array([1.0], np.float32)), to_bf16_bits(np.array([2.0 ** -8], np.float32))
    bf16_sum(one, tie)                                                         # 1 + 2^-8: a tie -> 1
    assert from_bf16_bits(one)[0] == 1.0
    h = a.astype(np.float16)
    add_halves(h, b.astype(np.float16))
    assert h.dtype == np.float16
    assert np.array_equal(h, (a.astype(np.float16).astype(np.float32) + b.astype(np.float16).astype(np.float32))
                          .astype(np.float16))


def test_half_conversions_equal_numpy_casts():
    """hpclm.compress.half against NumPy's float16 casts: every half value decoded, and floats
    around every rounding boundary (midpoints between halves, subnormals, overflow, inf, NaN) encoded."""
    from hpclm.compress.half import float_to_half, half_to_float
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    with np.errstate(invalid="ignore", over="ignore"):
        want = every.astype(np.float32)
        got = half_to_float(every)
        assert np.all((got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want)))
        finite = np.unique(want[np.isfinite(want)].astype(np.float64))
        mids = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)       # exact ties, round to even
        near = np.concatenate([np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))])
        x = np.concatenate([mids, near, want, grad(20000) * np.float32(1e-6), grad(20000) * np.float32(3e4),
                            np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65520, 65536, 1e9, 2.0 ** -25,
                                      2.0 ** -26], np.float32)])
        want16, got16 = x.astype(np.float16), float_to_half(x)
    same = (want16.view(np.uint16) == got16.view(np.uint16)) | (np.isnan(want16) & np.isnan(got16))
    assert got16.dtype == np.float16 and same.all(), x[~same][:5]
