"""The compiled compressor kernels (hpclm.compress.cpu) against their NumPy twins: every compressor's
payload and decompressed output bit for bit on sizes around the chunk and block edges, special
values (NaN, inf, -0.0, ties, all-zero), the 16-bit conversions on every half bit pattern, the
wire sums and the fused error-feedback updates. ef_sign's scale is a float64 sum in another order:
it agrees to 1 float32 ulp."""
import sys
from pathlib import Path

import numpy as np
import pytest

from hpclm import kernels
from hpclm.compress import REGISTRY, build, build_with_memory
from hpclm.config import CompressConfig
from hpclm.errors import UserError

pytest.importorskip("numba")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernelutil import both, restore_kernels  # noqa: E402,F401

SIZES = [0, 1, 7, 8, 9, 255, 257, 4097, 65535, 65537, 300001]
NAMES = [n for n in REGISTRY if n not in ("none", "powersgd")]   # powersgd: its products are tested below


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def roundtrip(name, g, **cfg):
    c = build(CompressConfig(name=name, density=0.01, threshold=2.0, **cfg), rank=1)
    payload, ctx = c.compress(g.copy(), 3)
    return payload, c.decompress(payload, ctx)


def assert_twins(name, g, **cfg):
    (p0, d0), (p1, d1) = both(lambda: roundtrip(name, g, **cfg))
    assert len(p0) == len(p1)
    for i, (a, b) in enumerate(zip(p0, p1)):
        if name == "ef_sign" and i == 1:                               # the scale: mean |g|, summed in another order
            assert a.dtype == b.dtype and abs(int(a.view(np.int32)[0]) - int(b.view(np.int32)[0])) <= 1
        else:
            assert same_bits(a, b), (name, g.size, i)
    if name == "ef_sign":
        np.testing.assert_allclose(d1, d0, rtol=2 ** -23)
    else:
        assert same_bits(d0, d1), (name, g.size)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_compressor_twins(name, n, restore_kernels):
    g = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    assert_twins(name, g)


@pytest.mark.parametrize("name", NAMES)
def test_special_inputs(name, restore_kernels):
    zeros = np.zeros(1000, np.float32)
    ties = np.repeat(np.float32([0.5, -0.5, 2.0, -2.0]), 300)               # equal magnitudes: ties by index
    signed = np.float32([0.0, -0.0, 1e-40, -1e-40, 3.0, -3.0] * 50)         # +-0, subnormals
    for g in (zeros, ties, signed):
        assert_twins(name, g)


@pytest.mark.parametrize("name", ["int8", "signsgd", "ef_sign", "bf16", "fp16", "qsgd", "kmeans"])
def test_float64_gradients(name, restore_kernels):
    g = np.random.default_rng(5).standard_normal(70001) * 1e-3
    assert_twins(name, g)


@pytest.mark.parametrize("block", [1, 3, 256, 1000, 1 << 17])
def test_int8_blocks(block, restore_kernels):
    g = np.random.default_rng(block).standard_normal(200003).astype(np.float32)
    g[:block] = 0                                                           # an all-zero block
    assert_twins("int8", g, block=block)


@pytest.mark.parametrize("levels", [1, 4, 16, 127])
def test_qsgd_levels(levels, restore_kernels):
    assert_twins("qsgd", np.random.default_rng(levels).standard_normal(100003).astype(np.float32), levels=levels)


@pytest.mark.parametrize("fmt", ["compact", "plain"])
def test_sparse_formats(fmt, restore_kernels):
    g = np.random.default_rng(3).standard_t(2, 300001).astype(np.float32)   # heavy tails
    for name in ("topk", "threshold", "randomk"):
        assert_twins(name, g, sparse_format=fmt)


@pytest.mark.parametrize("t", [0.0, 0.5, 2.0, 3.0, 9.0])                           # 100 % .. none above
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_select_abs_collected_and_gathered(t, dtype):
    """Both ways of select_abs -- chunks collecting their few marked elements (t >= 2: at most
    CHUNK / 16 per chunk), the bitmap scanned then gathered (t < 2) -- against NumPy, with one
    chunk crowded past the collection (most of its elements above t) among sparse ones."""
    from hpclm.compress import cpu
    g = np.random.default_rng(7).standard_normal(3 * cpu.CHUNK + 11).astype(dtype)
    crowded = g.copy()
    crowded[cpu.CHUNK:2 * cpu.CHUNK] *= 100.0
    for a in (g, crowded):
        for strict in (False, True):
            want = np.flatnonzero(np.abs(a) > t if strict else np.abs(a) >= t).astype(np.int32)
            idx, values = cpu.select_abs(a, t, strict)
            assert same_bits(idx, want) and same_bits(values, a[want]), (t, strict)


@pytest.mark.parametrize("n,density", [(300001, 0.01), (1 << 20, 0.001), (5000, 0.3)])
def test_topk_compiled_selection_is_exact(n, density, restore_kernels):
    """The one-pass selection (not a fallback) returns the exact top-k set of select_topk."""
    from hpclm.compress.topk import select_topk, select_topk_compiled, topk_count
    kernels.use("numba")
    g = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    k = topk_count(n, density)
    found = select_topk_compiled(g, k, 12345)
    assert found is not None
    assert same_bits(found[0], select_topk(np.abs(g), k, np)) and same_bits(found[1], g[found[0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["normal", "narrow", "ties", "zeros", "one"])
def test_top_k_of_candidates(case, dtype):
    """cpu.top_k (histogram over [min, max], then the k-th bin sorted) against select_topk of |v|:
    values spread wide and packed in a narrow range (what the candidates above a cut are), many
    ties at the k-th, mostly zeros, a single element; k from 1 to all."""
    from hpclm.compress import cpu
    from hpclm.compress.topk import select_topk
    rs = np.random.default_rng(3)
    v = rs.standard_normal(20011)
    v = {"normal": v, "narrow": np.sign(v) * (2.5 + np.abs(v) * 1e-3), "ties": np.round(v * 2) / 2,
         "zeros": np.where(np.arange(v.size) % 7 == 0, -1.5, 0.0), "one": v[:1]}[case].astype(dtype)
    for k in sorted({k for k in (1, 2, v.size // 3, v.size // 7, v.size - 1, v.size) if 0 < k <= v.size}):
        assert same_bits(cpu.top_k(v, k), select_topk(np.abs(v), k, np).astype(np.int64)), (case, k)


def test_largest_patterns_of_inverted_hashes():
    """randomk's use: the k smallest of distinct uint64 hashes as the k largest of ~hash (the top
    bits set, the spread below 2^-6 of the range), against a stable argsort."""
    from hpclm.compress import cpu, rng
    h = rng.hash64(99, 50000)
    h = h[h < np.uint64(1 << 58)]                                               # candidates below a cut
    for k in (1, 17, h.size // 2, h.size):
        want = np.sort(np.argsort(h, kind="stable")[:k])
        assert same_bits(cpu.largest_patterns(~h, k), want.astype(np.int64)), k
    assert cpu.largest_patterns(~h, 0).size == 0
    with pytest.raises(ValueError):
        cpu.largest_patterns(~h, h.size + 1)                                   # no garbage positions


def test_topk_nan_falls_back_to_numpy(restore_kernels):
    g = np.random.default_rng(4).standard_normal(100000).astype(np.float32)
    g[17] = np.nan                                                          # NumPy orders NaN above every number
    assert_twins("topk", g)


def _half_kinds():
    from hpclm.compress import cpu
    return sorted({cpu.HALF_SOFTWARE, cpu.HALF})       # the integer kernel, and the instruction where there is one


@pytest.fixture(params=_half_kinds(), ids=lambda kind: {1: "software", 2: "instruction"}[kind])
def half_kind(request, monkeypatch):
    """Each float -> half kernel of this machine in turn (cpu.HALF: the one to_16 and sum_16 use)."""
    from hpclm.compress import cpu
    monkeypatch.setattr(cpu, "HALF", request.param)
    return request.param


def test_half_conversions_every_pattern(restore_kernels, half_kind):
    from hpclm.compress.half import float_to_half, half_to_float
    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f0, f1 = both(lambda: half_to_float(halves))
    assert same_bits(f0, f1)
    f = f0[~np.isnan(f0)]
    near = np.concatenate([f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf)),
                           (f[1:] + f[:-1]) / 2,                           # exact ties between neighbours
                           np.float32([65504, 65519.99, 65520, 1e9, np.inf, -np.inf, np.nan, 2 ** -25, 2 ** -26]),
                           np.uint32([0x7F800001, 0xFFFFFFFF, 0x7FC02000, 0xFFBFE000]).view(np.float32)])  # NaN payloads
    h0, h1 = both(lambda: float_to_half(near))
    assert same_bits(h0, h1)
    numbers = ~np.isnan(near)
    with np.errstate(over="ignore"):                                       # and both round as NumPy's cast
        assert same_bits(h0[numbers], near[numbers].astype(np.float16))
    assert np.all(h0[~numbers].view(np.uint16) & 0x7FFF == 0x7E00)         # every NaN: the quiet NaN, its sign kept


def test_bf16_conversions_special_values(restore_kernels):
    from hpclm.compress.bf16 import from_bf16_bits, to_bf16_bits
    x = np.float32([0.0, -0.0, 1.0, 1.00390625, 1.005859375, -1.00390625, np.inf, -np.inf, np.nan,
                    3.4e38, 1e-45, -1e-45, 1.1754942e-38])
    x = np.concatenate([x, np.random.default_rng(6).standard_normal(70001).astype(np.float32)])
    b0, b1 = both(lambda: to_bf16_bits(x))
    assert same_bits(b0, b1)
    patterns = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    assert same_bits(*both(lambda: from_bf16_bits(patterns)))


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_wire_sums(name, restore_kernels, half_kind):
    c = build(CompressConfig(name=name))
    rng = np.random.default_rng(7)
    a, b = (c.compress(rng.standard_normal(100003).astype(np.float32) * s)[0][0] for s in (1.0, 1e4))

    def summed():
        acc = a.copy()
        c.wire_sum(acc, b)
        return acc
    assert same_bits(*both(summed))


@pytest.mark.parametrize("name", ["ef_sign", "signsgd", "topk", "randomk", "threshold", "kmeans"])
def test_error_feedback_twins(name, restore_kernels):
    """Three steps through ErrorFeedback: payloads and residuals agree (ef_sign to its scale's ulp)."""
    def run():
        cfg = CompressConfig(name=name, density=0.01, threshold=2.0, error_feedback="on")
        ef = build_with_memory(cfg, 70001, np.float32)
        rng = np.random.default_rng(8)
        payloads = [ef.compress(rng.standard_normal(70001).astype(np.float32), step)[0] for step in range(3)]
        return payloads, ef.residual.copy()
    (p0, r0), (p1, r1) = both(run)
    if name == "ef_sign":
        np.testing.assert_allclose(r1, r0, rtol=1e-5, atol=1e-6)
    else:
        assert same_bits(r0, r1)
        for a, b in zip(p0, p1):
            assert all(same_bits(x, y) for x, y in zip(a, b))


def test_decompress_into_out(restore_kernels):
    """decompress(out=) writes into the given buffer on the compiled path and equals the fresh output."""
    kernels.use("numba")
    g = np.random.default_rng(9).standard_normal(70001).astype(np.float32)
    for name in NAMES:
        c = build(CompressConfig(name=name, density=0.01, threshold=2.0))
        payload, ctx = c.compress(g, 0)
        out = np.full(g.size, np.nan, np.float32)
        assert same_bits(c.decompress(payload, ctx, out=out), c.decompress(payload, ctx)), name


def test_kernel_switch(restore_kernels):
    kernels.use("numpy")
    assert kernels.active() == "numpy" and not kernels.enabled()
    kernels.use("auto")
    assert kernels.active() == "numba"
    with pytest.raises(UserError):
        kernels.use("fortran")
    from hpclm.config import TrainConfig
    with pytest.raises(UserError):
        TrainConfig(kernels="fortran").validate()
    TrainConfig(kernels="numpy").validate()


@pytest.mark.parametrize("n,m", [(1, 5), (300001, 4096), (70000, 65537)])
def test_hashed_sample_twin(n, m):
    from hpclm.compress import cpu, rng
    g = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    key = rng.stream_key(5, 2, 1)
    twin = np.abs(g[(rng.hash64(key, m) % np.uint64(n)).astype(np.int64)])
    assert same_bits(cpu.sample_abs(g, key, m), twin)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_decode_codes_twin(bits, dtype):
    """Whole codes per byte (bits 1, 2, 4, 8) decode by a byte table, 6-bit codes four per three
    bytes, the rest by 64-bit words: each equals table[unpack_codes(...)] on every size around the
    byte, unit and chunk edges; decode_affine (6 bits: arithmetic, no table) equals
    (codes.astype(dtype) - offset) * scale."""
    from hpclm.compress import cpu
    from hpclm.compress.bits import unpack_codes
    table = (np.arange(1 << bits) * 1.5 - 3).astype(dtype)
    offset, scale = dtype(1 << (bits - 1)), dtype(0.3)
    for n in (1, 2, 3, 4, 5, 7, 8, 9, 65535, 3 * 65536 + 5):
        packed = np.random.default_rng(n).integers(0, 256, (n * bits + 7) // 8).astype(np.uint8)
        codes = unpack_codes(packed, n, bits)
        assert same_bits(cpu.decode_codes(packed, n, bits, table), table[codes])
        want = codes.astype(dtype)
        want -= offset
        want *= scale
        assert same_bits(cpu.decode_affine(packed, n, bits, offset, scale, dtype), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_codes_at_special_values(dtype):
    """The compiled assignment equals searchsorted's twin at NaN, +-inf, +-0, subnormals and values
    equal to a midpoint, and with a midpoint of -0.0, and with infinite or NaN midpoints (centroids
    of a gradient that holds them)."""
    from hpclm.compress import cpu
    from hpclm.compress.bits import pack_codes
    from hpclm.compress.kmeans import nearest_codes
    finite = np.sort(np.random.default_rng(2).standard_normal(15)).astype(np.float32)
    finite[3] = 0.0
    negative_zero = finite.copy()
    negative_zero[3] = -0.0                                               # (-0) - (+0) = -0: not below
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1e-45, -1e-45]
    for mid in (finite, negative_zero, np.append(finite[:14], np.inf).astype(np.float32),
                np.concatenate([[-np.inf], finite[1:14], [np.nan]]).astype(np.float32)):
        g = np.random.default_rng(3).standard_normal(9001).astype(dtype)
        g[:9 * 40] = np.tile(special, 40)
        g[400:415] = mid                                                  # ties with every midpoint
        got = cpu.encode_nearest(g, mid, 4)
        assert same_bits(got, pack_codes(nearest_codes(g, mid), 4)), mid


@pytest.mark.parametrize("k", [2, 4, 8, 64, 128])
def test_kmeans_codes_every_width(k):
    """Each k (a kernel of its own: the midpoints are a tuple) on sizes around the 4096-element
    block and the chunk, with repeated midpoints, bit for bit against the twin."""
    from hpclm.compress import cpu
    from hpclm.compress.bits import pack_codes
    from hpclm.compress.kmeans import nearest_codes
    mid = np.sort(np.random.default_rng(k).standard_normal(k - 1)).astype(np.float32)
    if k > 2:
        mid[k // 2:k // 2 + 2] = mid[k // 2]                              # a repeated midpoint
    bits = k.bit_length() - 1
    for n in (0, 1, 7, 4095, 4097, 65536 + 4096 + 3):
        g = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        g[: min(n, k - 1)] = mid[: min(n, k - 1)]                         # ties
        assert same_bits(cpu.encode_nearest(g, mid, bits), pack_codes(nearest_codes(g, mid), bits)), (k, n)


# -- powersgd's products: sums in another order than BLAS, held to the summation error bound ------
PRODUCT_SHAPES = [(0, 5), (5, 0), (1, 1), (7, 5), (255, 3), (257, 40), (513, 1000)]


def within_sum_bound(got, want, magnitude, terms, dtype):
    """|got - want| <= 2 terms eps (|A| |B|) elementwise: both sums are within gamma_terms of exact."""
    eps = np.finfo(dtype).eps
    return got.shape == want.shape and got.dtype == want.dtype and bool(
        np.all(np.abs(got - want) <= 2 * max(terms, 1) * eps * magnitude + np.finfo(dtype).tiny))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", PRODUCT_SHAPES)
@pytest.mark.parametrize("r", [1, 4])
def test_powersgd_product_twins(dtype, shape, r, restore_kernels):
    """compute_p, accumulate_p (e += g exactly, then e Q), compute_q and approximate (with and
    without the error update) on the kernels against NumPy's matmul, on row counts around ROWS."""
    from hpclm.compress.powersgd import accumulate_p, approximate, compute_p, compute_q
    n, k = shape
    rng = np.random.default_rng(n * 1000 + k + r)
    m, g = rng.standard_normal((2, n, k)).astype(dtype)
    q, p = rng.standard_normal((k, r)).astype(dtype), rng.standard_normal((n, r)).astype(dtype)

    def run():
        e = m.copy()
        p_acc = accumulate_p(e, g, q)
        e2 = m.copy()
        approx = approximate(p, q, out=np.empty((n, k), dtype), subtract_from=e2)
        return compute_p(m, q), p_acc, e, compute_q(m, p), approximate(p, q), approx, e2
    (p0, a0, e0, q0, r0, x0, f0), (p1, a1, e1, q1, r1, x1, f1) = both(run)
    assert within_sum_bound(p1, p0, np.abs(m) @ np.abs(q), k, dtype)
    assert same_bits(e1, e0) and within_sum_bound(a1, a0, np.abs(m + g) @ np.abs(q), k, dtype)
    assert within_sum_bound(q1, q0, np.abs(m).T @ np.abs(p), n, dtype)
    assert within_sum_bound(r1, r0, np.abs(p) @ np.abs(q).T, r, dtype) and same_bits(x1, r1)
    assert within_sum_bound(f1, f0, np.abs(m) + np.abs(p) @ np.abs(q).T, r + 1, dtype)


def test_powersgd_products_special_values(restore_kernels):
    """A NaN or inf in M reaches the same rows (P) and columns (Q) as in NumPy's products."""
    from hpclm.compress.powersgd import compute_p, compute_q
    m = np.random.default_rng(1).standard_normal((300, 50)).astype(np.float32)
    m[3, 7], m[280, 9] = np.nan, np.inf
    q = np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32)
    p = np.random.default_rng(3).standard_normal((300, 4)).astype(np.float32)
    (p0, q0), (p1, q1) = both(lambda: (compute_p(m, q), compute_q(m, p)))
    assert np.array_equal(np.isnan(p0), np.isnan(p1)) and np.array_equal(np.isinf(p0), np.isinf(p1))
    assert np.array_equal(np.isnan(q0), np.isnan(q1)) and np.array_equal(np.isinf(q0), np.isinf(q1))
    assert np.isnan(p1[3]).all() and np.isnan(q1[7]).all() and not np.isnan(p1[4]).any()


def test_powersgd_products_do_not_depend_on_threads(restore_kernels):
    """The products' summation order is fixed by the shape (blocks of ROWS rows), not by the
    thread count: one thread and all threads give the same bits."""
    import numba
    from hpclm.compress.powersgd import approximate, compute_p, compute_q
    kernels.use("numba")
    rng = np.random.default_rng(4)
    m, q, p = (rng.standard_normal(s).astype(np.float32) for s in ((1500, 700), (700, 4), (1500, 4)))
    before = numba.get_num_threads()
    try:
        outs = []
        for t in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(t)
            outs.append((compute_p(m, q), compute_q(m, p), approximate(p, q)))
    finally:
        numba.set_num_threads(before)
    assert all(same_bits(a, b) for a, b in zip(*outs))


@pytest.mark.parametrize("error_feedback", [True, False])
def test_powersgd_reducer_twins(error_feedback, restore_kernels):
    """Three PowerSGDReducer steps of a small model layout: the gradients (and error buffers) on the
    kernels agree with NumPy's to float32 round-off."""
    from hpclm.model.params import ParamLayout
    from hpclm.parallel.powersgd import PowerSGDReducer
    layout = ParamLayout([("w1", (300, 130)), ("b", (130,)), ("w2", (130, 520))])
    grads = np.random.default_rng(5).standard_normal((3, layout.size)).astype(np.float32)

    def run():
        ps = PowerSGDReducer(layout, np.float32, rank=4, seed=1, error_feedback=error_feedback)
        return [ps.step(None, g.copy()) for g in grads], ps.error.copy() if error_feedback else np.zeros(1)
    (g0, e0), (g1, e1) = both(run)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(e1, e0, rtol=1e-4, atol=1e-5)
