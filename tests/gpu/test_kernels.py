"""CUDA kernels versus their NumPy twins (skipped without CuPy and a GPU). NEVER RUN ON HARDWARE
at the time of writing (developed on a machine without a GPU): expect first-run fixes."""
import numpy as np
import pytest

cupy = pytest.importorskip("cupy")
try:
    cupy.cuda.runtime.getDeviceCount()
except Exception:  # pragma: no cover
    pytest.skip("no CUDA device", allow_module_level=True)

from hpclm import xp as X  # noqa: E402
from hpclm.compress import build, cuda, rng  # noqa: E402
from hpclm.compress.bits import pack_codes, unpack_codes  # noqa: E402
from hpclm.compress.int8 import int8_dequantize, int8_quantize  # noqa: E402
from hpclm.compress.qsgd import qsgd_codes  # noqa: E402
from hpclm.compress.terngrad import terngrad_codes  # noqa: E402
from hpclm.compress.topk import select_topk  # noqa: E402
from hpclm.config import CompressConfig  # noqa: E402

SIZES = [0, 1, 7, 31, 32, 33, 1000, 4099, (1 << 20) + 3]


def grad(n, seed=0):
    g = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    if n > 5:
        g[3] = -0.0
        g[4] = 0.0
    return g


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("n", SIZES)
def test_sign_pack_unpack(n, version):
    g = grad(n)
    p = cuda.sign_pack(cupy.asarray(g), version=version)
    assert np.array_equal(p.get(), np.packbits(np.signbit(g)))
    d = cuda.sign_unpack(p, n, 0.25, version=version).get()
    assert np.array_equal(d, np.where(np.signbit(g), -0.25, 0.25).astype(np.float32))


@pytest.mark.parametrize("n", [1, 33, 4099])
def test_sign_vote(n):
    ps = [np.packbits(np.signbit(grad(n, s))) for s in range(5)]
    from hpclm.compress.signsgd import majority_vote
    X.use("cpu")
    ref = majority_vote(ps, n)
    assert np.array_equal(cuda.sign_vote([cupy.asarray(p) for p in ps], n).get(), ref)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
@pytest.mark.parametrize("n", SIZES)
def test_pack_codes(n, bits):
    codes = np.random.default_rng(n).integers(0, 1 << bits, n).astype(np.uint8)
    p = cuda.pack_codes(cupy.asarray(codes), bits)
    assert np.array_equal(p.get(), pack_codes(codes, bits))
    for v in (["v1", "v2"] if 8 % bits == 0 else ["v1"]):
        assert np.array_equal(cuda.unpack_codes(p, n, bits, version=v).get(), unpack_codes(pack_codes(codes, bits), n, bits))


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("n", SIZES)
def test_int8(n, version):
    g = grad(n) * 3
    q, s = cuda.int8_quantize(cupy.asarray(g), 256, version=version)
    rq, rs = int8_quantize(g, 256)
    assert np.array_equal(s.get(), rs) and np.array_equal(q.get(), rq)
    assert np.array_equal(cuda.int8_dequantize(q, s, 256, n).get(), int8_dequantize(rq, rs, 256, n))


@pytest.mark.parametrize("n", SIZES)
def test_stochastic_codes_bit_identical(n):
    g = grad(n)
    key = rng.stream_key(3, 7, 1)
    assert np.array_equal(rng.uniform(key, n, xp=cupy).get(), rng.uniform(key, n, xp=np))
    f = np.float32(16) / np.float32(np.linalg.norm(g) or 1)
    assert np.array_equal(cuda.qsgd_codes(cupy.asarray(g), f, 16, key).get(), qsgd_codes(g, f, 16, key))
    inv = np.float32(1) / np.float32(np.abs(g).max() if n else 1)
    assert np.array_equal(cuda.terngrad_codes(cupy.asarray(g), inv, key).get(), terngrad_codes(g, inv, key))


@pytest.mark.parametrize("n", SIZES[1:])
@pytest.mark.parametrize("density", [0.001, 0.01, 0.5])
def test_topk_same_set(n, density):
    g = grad(n)
    g[: n // 3] = np.round(g[: n // 3])  # plenty of ties
    k = max(1, int(n * density))
    ref = select_topk(np.abs(g), k, np)
    assert np.array_equal(cuda.topk_indices(cupy.asarray(g), k).get(), ref)


def test_scatter_add_and_ef():
    n = 1000
    idx = np.random.default_rng(0).integers(0, n, 5000).astype(np.int32)
    vals = grad(5000)
    ref = np.zeros(n, np.float32)
    np.add.at(ref, idx, vals)
    out = cuda.scatter_add(cupy.zeros(n, cupy.float32), cupy.asarray(idx), cupy.asarray(vals)).get()
    np.testing.assert_allclose(out, ref, atol=1e-4)
    acc = grad(n)
    got = cuda.ef_sign_residual(cupy.asarray(acc), 0.5).get()
    assert np.array_equal(got, acc - np.copysign(np.float32(0.5), acc))


@pytest.mark.parametrize("name", ["int8", "qsgd", "terngrad", "signsgd", "ef_sign", "topk", "randomk", "kmeans"])
def test_compressor_gpu_path_matches_cpu(name):
    g = grad(4099)
    X.use("cpu")
    c = build(CompressConfig(name=name))
    ref = c.decompress(*c.compress(g, 3))
    X.use("gpu")
    try:
        c = build(CompressConfig(name=name))
        got = X.to_host(c.decompress(*c.compress(cupy.asarray(g), 3)))
    finally:
        X.use("cpu")
    if name in ("int8", "signsgd", "topk", "randomk"):
        assert np.array_equal(got, ref)
    else:  # norms/means reduced in a different order may differ in the last bit
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
