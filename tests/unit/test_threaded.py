"""ThreadedGPT (batch row slices on threads, shared parameters) against the plain model."""
import numpy as np
import pytest

from hpclm.config import ModelConfig
from hpclm.model import GPT
from hpclm.model.threaded import ThreadedGPT


def pair(tie=True, threads=2):
    cfg = ModelConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, tie_weights=tie)
    plain = GPT(cfg, seed=3, dtype="float64")
    threaded = ThreadedGPT(GPT(cfg, seed=3, dtype="float64"), threads)
    return plain, threaded


def batch(b, t=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 13, (b, t)), rng.integers(0, 13, (b, t))


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("b,threads", [(4, 2), (5, 2), (7, 3), (1, 2)])
def test_loss_and_gradients_equal_the_plain_model(tie, b, threads):
    plain, threaded = pair(tie, threads)
    x, y = batch(b)
    assert threaded.forward_backward(x, y) == pytest.approx(plain.forward_backward(x, y), rel=1e-12)
    np.testing.assert_allclose(threaded.grad_flat, plain.grad_flat, rtol=1e-10, atol=1e-14)
    assert threaded.loss(x, y) == pytest.approx(plain.loss(x, y), rel=1e-12)


def test_accumulate_adds_to_existing_gradients():
    plain, threaded = pair()
    (x1, y1), (x2, y2) = batch(4, seed=1), batch(4, seed=2)
    plain.forward_backward(x1, y1)
    plain.forward_backward(x2, y2, accumulate=True)
    threaded.forward_backward(x1, y1)
    threaded.forward_backward(x2, y2, accumulate=True)
    np.testing.assert_allclose(threaded.grad_flat, plain.grad_flat, rtol=1e-10, atol=1e-14)


def test_grad_ready_announces_final_segments_in_decreasing_order():
    plain, threaded = pair()
    x, y = batch(6)
    plain.forward_backward(x, y)
    seen = []

    def ready(offset):
        # every gradient at or above `offset` is already combined and final
        np.testing.assert_allclose(threaded.grad_flat[offset:], plain.grad_flat[offset:], rtol=1e-10, atol=1e-14)
        seen.append(offset)

    threaded.forward_backward(x, y, grad_ready=ready)
    assert seen == sorted(seen, reverse=True) and seen[-1] == 0 and len(seen) == 2 + 2  # head, 2 blocks, embeddings


def test_replicas_share_the_parameter_buffer():
    _, threaded = pair(threads=3)
    assert all(np.shares_memory(r.flat, threaded.flat) for r in threaded.replicas)
    threaded.params["wte"][0, 0] = 42.0
    assert all(r.params["wte"][0, 0] == 42.0 for r in threaded.replicas)
