"""parallel.recompute = block (hpclm.model.units RecomputeCache): the gradients and the loss are
bitwise those without recomputation (float64), tied and untied, one thread and row-slice threads,
and through a copying parameter source; the counted activation bytes drop to the closed form
(hpclm.parallel.memory.activation_bytes: block inputs only)."""
import numpy as np
import pytest

from hpclm.config import Config, ModelConfig
from hpclm.errors import UserError
from hpclm.model import GPT
from hpclm.model import units as U
from hpclm.model.threaded import ThreadedGPT
from hpclm.parallel.memory import activation_bytes

CFG = ModelConfig(vocab_size=13, block_size=8, n_layer=3, n_head=2, n_embd=8)


def moved_model(tie=True, dtype="float64"):
    cfg = ModelConfig(**{**CFG.__dict__, "tie_weights": tie})
    model = GPT(cfg, seed=3, dtype=dtype)
    model.flat += np.random.default_rng(7).normal(0.0, 0.1, size=model.flat.size).astype(dtype)
    return model


def batch(B=4, T=8):
    rng = np.random.default_rng(1)
    return rng.integers(0, CFG.vocab_size, size=(B, T)), rng.integers(0, CFG.vocab_size, size=(B, T))


class CopyingSource:
    """Hands each unit fresh copies of its parameters (as ZeRO-3's gathered buffers are)."""

    def __init__(self, model):
        self.model = model

    def acquire(self, unit, phase):
        p = {n: self.model.params[n].copy() for n in unit.reads}
        return p, (None if phase == "forward" else self.model.grads)

    def release(self, unit, phase):
        pass


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("copying", [False, True], ids=["resident", "copying-source"])
def test_recomputed_gradients_equal_the_stored_ones_bitwise(tie, copying):
    idx, tgt = batch()
    out = {}
    for recompute in (False, True):
        model = moved_model(tie)
        model.recompute = recompute
        loss = model.forward_backward(idx, tgt, source=CopyingSource(model) if copying else None)
        out[recompute] = (loss, model.grad_flat.copy(), model.activation_bytes_peak)
    assert out[True][0] == out[False][0]
    assert np.array_equal(out[True][1], out[False][1])
    assert np.abs(out[False][1]).max() > 0
    assert out[True][2] < out[False][2]


def test_counted_activation_bytes_equal_the_closed_form_with_and_without_recompute():
    B, T = 4, 8
    idx, tgt = batch(B, T)
    for recompute in (False, True):
        model = moved_model()
        model.recompute = recompute
        model.forward_backward(idx, tgt)
        assert model.activation_bytes_peak == activation_bytes(CFG, B, T, 8, recompute=recompute), recompute
    # the recomputed caches are the blocks' inputs only: L N C floats for the blocks
    assert (activation_bytes(CFG, B, T, 8) - activation_bytes(CFG, B, T, 8, recompute=True)
            == CFG.n_layer * 8 * (20 * B * T * CFG.n_embd + 2 * B * T + B * CFG.n_head * T * T - B * T * CFG.n_embd))


def test_recompute_caches_hold_the_block_inputs_and_backward_consumes_them():
    model = moved_model()
    idx, tgt = batch()
    loss, caches = U.forward_units(model.units, model.resident, idx, *idx.shape, tgt, recompute=True)
    blocks = [c for u, c in zip(model.units, caches) if isinstance(u, U.Block)]
    assert all(isinstance(c, U.RecomputeCache) and c.x.shape == (idx.size, CFG.n_embd) for c in blocks)
    x1, _ = model.units[1].forward(model.params, blocks[0].x, *idx.shape)
    assert np.array_equal(x1, blocks[1].x)                  # block i's input is block i-1's output
    U.backward_units(model.units, model.resident, None, caches)
    assert caches == []


def test_threaded_model_recomputes_in_every_slice():
    idx, tgt = batch(B=6)
    grads = []
    for recompute in (False, True):
        threaded = ThreadedGPT(moved_model(), 2)
        threaded.recompute = recompute
        assert all(r.recompute == recompute for r in threaded.replicas)
        threaded.forward_backward(idx, tgt)
        grads.append((threaded.grad_flat.copy(), threaded.activation_bytes_peak))
    assert np.array_equal(grads[0][0], grads[1][0])
    assert grads[1][1] < grads[0][1]


def test_config_checks_recompute():
    cfg = Config()
    cfg.parallel.recompute = "selective"
    with pytest.raises(UserError, match="parallel.recompute"):
        cfg.parallel.validate()
    cfg.parallel.recompute = "block"
    cfg.parallel.validate()
