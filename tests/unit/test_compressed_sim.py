"""Single-process pieces of hpclm.parallel.exchange / state / onebit / powersgd: payload packing, the
P=1 paths (compression still applies with one rank), the 1-bit all-reduce against its simulation,
PowerSGD's matrix selection and state round trip, checkpoint-state flattening."""
import numpy as np
import pytest

from hpclm.compress.base import AGGREGATE_GATHER, Compressor, Context
from hpclm.model.params import ParamLayout
from hpclm.parallel import exchange as CP
from hpclm.parallel import state as ST
from hpclm.parallel.onebit import OneBitAllreduce, SignScale, padded_size, simulate
from hpclm.parallel.powersgd import PowerSGDReducer, split_slots


class TopK(Compressor):
    name, aggregate = "topk", AGGREGATE_GATHER

    def compress(self, grad, step=0):
        idx = np.sort(np.argsort(-np.abs(grad))[:5]).astype(np.int32)
        return (grad[idx], idx), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        out = np.zeros(ctx.n, ctx.dtype)
        out[payload[1]] = payload[0]
        return out


def test_pack_unpack_round_trip():
    payload = (np.arange(5, dtype=np.float32), np.arange(3, dtype=np.int8), np.array([2.5]))
    buf, counts = CP.pack(payload)
    assert buf.dtype == np.uint8 and buf.size == 24 + 8 + 8 and counts == [5, 3, 1]
    back = CP.unpack(buf, counts, payload)
    assert all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in zip(payload, back))


def test_one_rank_still_compresses():
    g = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    out = CP.average(None, g.copy(), TopK())
    assert np.count_nonzero(out) == 5 and np.array_equal(out, TopK().decompress(*TopK().compress(g)))


@pytest.mark.parametrize("n", [1, 8, 100])
def test_onebit_one_rank_matches_simulation(n):
    ob = OneBitAllreduce(n, 1, np.float64)
    assert ob.N == padded_size(n, 1) and ob.N % 8 == 0
    w, s = [np.zeros(ob.N)], [np.zeros(ob.k)]
    for seed in range(3):
        g = np.random.default_rng(seed).standard_normal(n)
        assert np.allclose(ob.allreduce(None, g.copy()), simulate([g], w, s), rtol=1e-13)
    assert np.allclose(ob.worker_error, w[0]) and np.allclose(ob.server_error, s[0])


def test_sign_scale():
    x = np.array([3.0, -4.0, 0.0])
    p, ctx = SignScale().compress(x)
    assert p[0].size == 1 and np.isclose(p[1][0], 5 / np.sqrt(3))
    assert np.allclose(SignScale().decompress(p, ctx), np.array([1, -1, 1]) * 5 / np.sqrt(3))


def test_powersgd_slots_and_state():
    layout = ParamLayout([("w", (8, 8)), ("b", (8,)), ("t", (2, 3))])
    mats, rest = split_slots(layout, 2)
    assert [s.name for s, _ in mats] == ["w"] and [s.name for s in rest] == ["b", "t"]
    ps = PowerSGDReducer(layout, np.float64, rank=2, seed=1)
    g = np.random.default_rng(2).standard_normal(layout.size)
    out = ps.step(None, g.copy())
    w = g[:64].reshape(8, 8)
    assert np.linalg.matrix_rank(out[:64].reshape(8, 8)) == 2 and np.array_equal(out[64:], g[64:])
    assert np.allclose(ps.error, (w - out[:64].reshape(8, 8)).reshape(-1))
    other = PowerSGDReducer(layout, np.float64, rank=2, seed=1)
    other.load_state_dict(ps.state_dict())
    assert np.array_equal(other.step(None, g.copy()), ps.step(None, g.copy()))


def test_powersgd_without_error_feedback_uses_the_gradient_itself():
    """error_feedback off: M is the gradient (no copy, read before the output overwrites it), so
    the step's output is P Q^T of the incoming gradient with P = orth(G Q0) and Q = G^T P."""
    from hpclm.compress.powersgd import orthogonalize
    layout = ParamLayout([("w", (8, 8)), ("b", (8,))])
    ps = PowerSGDReducer(layout, np.float64, rank=2, seed=1, error_feedback=False)
    q0 = ps.q_buf.reshape(8, 2).copy()
    g = np.random.default_rng(3).standard_normal(layout.size)
    w = g[:64].reshape(8, 8).copy()
    out = ps.step(None, g.copy())
    p = orthogonalize(w @ q0)
    assert ps.error is None and np.allclose(out[:64].reshape(8, 8), p @ (w.T @ p).T, rtol=1e-12, atol=1e-12)
    assert np.array_equal(out[64:], g[64:])


def test_flatten_state_round_trip():
    state = {"residual": np.ones(3), "compressor": {"q": np.zeros(2), "inner": {"x": np.arange(2)}}}
    flat = ST.flatten_state("compress.bucket0", state, {})
    assert sorted(flat) == ["compress.bucket0.compressor.inner.x", "compress.bucket0.compressor.q",
                            "compress.bucket0.residual"]
    back = ST.unflatten_state("compress.bucket0", flat)
    assert np.array_equal(back["compressor"]["inner"]["x"], np.arange(2)) and np.array_equal(back["residual"], np.ones(3))
