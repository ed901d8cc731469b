"""hpclm.model.units: the units composed equal the old fused model bit for bit, every split into
unit ranges equals the whole, a copying parameter source (what ZeRO does) equals the resident
one, Block hooks sit where tensor parallelism needs them, and activation_bytes counts the caches."""
import os
import sys

import numpy as np
import pytest

from hpclm.config import ModelConfig
from hpclm.model import GPT
from hpclm.model import layers as L
from hpclm.model import units as U
from hpclm.model.threaded import ThreadedGPT

sys.path.insert(0, os.path.dirname(__file__))
from test_layers import numeric_grad, rel_err  # noqa: E402


def small_cfg(tie=True, n_layer=2):
    return ModelConfig(vocab_size=13, block_size=8, n_layer=n_layer, n_head=2, n_embd=8, tie_weights=tie)


def generic_model(tie, dtype="float64", seed=0, n_layer=2, hooks=None):
    """A model with every parameter moved off its initial value (nonzero biases, LN gains != 1)."""
    cfg = small_cfg(tie, n_layer)
    model = GPT(cfg, seed=seed, dtype=dtype, hooks=hooks)
    model.flat += np.random.default_rng(seed + 100).normal(0.0, 0.1, size=model.flat.size).astype(dtype)
    return cfg, model


def batch(cfg, B, T, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, size=(B, T)), rng.integers(0, cfg.vocab_size, size=(B, T))


TIES = pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])


# ---------------------------------------------------------------------------------------- the fused model
def fused_forward_backward(p, d, cfg, idx, targets):
    """The model as one fused function, copied from hpclm/model/gpt.py before the split into
    units: returns (loss, logits (N, V)) and adds the gradients into d."""
    B, T = idx.shape
    mask = L.causal_mask(cfg.block_size, p["wte"].dtype, np)[:T, :T]
    x, emb_cache = L.embedding_forward(idx, p["wte"], p["wpe"])
    caches = []
    for i in range(cfg.n_layer):
        h = f"h.{i}."
        a, ln1 = L.layernorm_forward(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"])
        qkv, fc_attn = L.linear_forward(a, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"])
        y, att = L.attention_forward(qkv, B, T, cfg.n_head, mask)
        o, proj = L.linear_forward(y, p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"])
        x += o
        m, ln2 = L.layernorm_forward(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"])
        f, fc = L.linear_forward(m, p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"])
        g, gelu = L.gelu_forward(f)
        o, mproj = L.linear_forward(g, p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
        x += o
        caches.append((ln1, fc_attn, att, proj, ln2, fc, gelu, mproj))
    xf, lnf = L.layernorm_forward(x, p["ln_f.weight"], p["ln_f.bias"])
    head_w = p["wte"].T if cfg.tie_weights else p["lm_head.weight"]
    logits, head = L.linear_forward(xf, head_w, None)
    logits_copy = logits.copy()
    loss, ce = L.cross_entropy_forward(logits, targets.reshape(-1))
    dlogits = L.cross_entropy_backward(ce)
    if cfg.tie_weights:
        d["wte"] += dlogits.T @ head
        dxf = dlogits @ p["wte"]
    else:
        dxf = L.linear_backward(dlogits, head, p["lm_head.weight"], d["lm_head.weight"], None)
    dx = L.layernorm_backward(dxf, lnf, d["ln_f.weight"], d["ln_f.bias"])
    for i in reversed(range(cfg.n_layer)):
        h = f"h.{i}."
        ln1, fc_attn, att, proj, ln2, fc, gelu, mproj = caches.pop()
        dg = L.linear_backward(dx, mproj, p[h + "mlp.c_proj.weight"], d[h + "mlp.c_proj.weight"], d[h + "mlp.c_proj.bias"])
        df = L.gelu_backward(dg, gelu)
        dm = L.linear_backward(df, fc, p[h + "mlp.c_fc.weight"], d[h + "mlp.c_fc.weight"], d[h + "mlp.c_fc.bias"])
        dx += L.layernorm_backward(dm, ln2, d[h + "ln_2.weight"], d[h + "ln_2.bias"])
        dy = L.linear_backward(dx, proj, p[h + "attn.c_proj.weight"], d[h + "attn.c_proj.weight"], d[h + "attn.c_proj.bias"])
        dqkv = L.attention_backward(dy, att)
        da = L.linear_backward(dqkv, fc_attn, p[h + "attn.c_attn.weight"], d[h + "attn.c_attn.weight"], d[h + "attn.c_attn.bias"])
        dx += L.layernorm_backward(da, ln1, d[h + "ln_1.weight"], d[h + "ln_1.bias"])
    L.embedding_backward(dx, emb_cache, d["wte"], d["wpe"])
    return float(loss), logits_copy


@TIES
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_units_equal_the_fused_model_bit_for_bit(tie, dtype):
    cfg, model = generic_model(tie, dtype)
    idx, targets = batch(cfg, B=3, T=7)
    grads = model.layout.views(np.zeros_like(model.grad_flat))
    fused_loss, fused_logits = fused_forward_backward(model.params, grads, cfg, idx, targets)
    fused_grad = np.concatenate([grads[s.name].reshape(-1) for s in model.layout.slots])
    assert model.forward_backward(idx, targets) == fused_loss
    np.testing.assert_array_equal(model.grad_flat, fused_grad)
    np.testing.assert_array_equal(model.forward(idx), fused_logits.reshape(3, 7, -1))
    assert model.loss(idx, targets) == fused_loss


# ---------------------------------------------------------------------------------------- units and ranges
@TIES
def test_units_tile_the_layout_and_param_range(tie):
    cfg, model = generic_model(tie, n_layer=3)
    units = model.units
    assert [type(u) for u in units] == [U.Embedding, U.Block, U.Block, U.Block, U.Head]
    assert [u.i for u in units[1:-1]] == [0, 1, 2]
    ranges = [U.param_range(u, model.layout) for u in units]
    assert ranges[0][0] == 0 and ranges[-1][1] == model.layout.size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))          # contiguous, in order
    assert ranges[2] == (model.layout.by_name["h.1.ln_1.weight"].offset, model.layout.by_name["h.2.ln_1.weight"].offset)
    assert units[-1].reads == units[-1].names + (("wte",) if tie else ())
    assert all(u.reads == u.names for u in units[:-1])

    class Scattered:
        names = ("wte", "h.0.ln_1.weight")
    with pytest.raises(ValueError):
        U.param_range(Scattered(), model.layout)
    with pytest.raises(ValueError):
        U.check_tiling(units[::-1], model.layout)


def splits(n):
    """Every way to cut n units into 2 or 3 contiguous, non-empty ranges."""
    out = [[(0, k), (k, n)] for k in range(1, n)]
    out += [[(0, a), (a, b), (b, n)] for a in range(1, n) for b in range(a + 1, n)]
    return out


@TIES
def test_every_split_into_ranges_equals_the_whole(tie):
    cfg, model = generic_model(tie)
    idx, targets = batch(cfg, B=2, T=6)
    B, T = idx.shape
    whole_loss = model.forward_backward(idx, targets)
    whole = model.grad_flat.copy()
    src = model.resident
    for cut in splits(len(model.units)):
        model.grad_flat.fill(0)
        ranges = [model.units[a:b] for a, b in cut]
        acts, cache_lists = [idx], []
        for units in ranges:
            inp = acts[-1]
            kept = None if units[0] is model.units[0] else inp.copy()
            out, caches = U.forward_units(units, src, inp, B, T, targets if units[-1] is model.units[-1] else None)
            if kept is not None:
                np.testing.assert_array_equal(inp, kept)                   # the input is left as it is
            acts.append(out)
            cache_lists.append(caches)
        assert float(acts[-1]) == whole_loss
        d = None
        for units, caches in zip(reversed(ranges), reversed(cache_lists)):
            kept = None if d is None else d.copy()
            d_in = U.backward_units(units, src, d, caches)
            if kept is not None:
                np.testing.assert_array_equal(d, kept)                     # the output gradient too
            assert caches == []                                            # consumed
            d = d_in
            assert (d is None) == (units[0] is model.units[0])
            if d is not None:
                assert d.shape == (B * T, cfg.n_embd)
        np.testing.assert_array_equal(model.grad_flat, whole, err_msg=str(cut))


def test_backward_units_refuses_mismatched_caches():
    cfg, model = generic_model(True)
    idx, targets = batch(cfg, B=2, T=4)
    _, caches = U.forward_units(model.units, model.resident, idx, 2, 4, targets)
    with pytest.raises(ValueError):
        U.backward_units(model.units[1:], model.resident, None, caches)


@TIES
def test_grad_ready_fires_at_each_units_first_offset(tie):
    cfg, model = generic_model(tie, n_layer=3)
    idx, targets = batch(cfg, B=2, T=5)
    seen = []
    model.forward_backward(idx, targets, grad_ready=seen.append)
    by = model.layout.by_name
    assert seen == [by["ln_f.weight"].offset, by["h.2.ln_1.weight"].offset, by["h.1.ln_1.weight"].offset,
                    by["h.0.ln_1.weight"].offset, 0]


# ---------------------------------------------------------------------------------------- sources
class CopyingSource:
    """What ZeRO does: acquire copies a unit's parameters into fresh arrays (and backward gives
    fresh zero gradients); release poisons those copies and adds the gradients into the model's."""

    def __init__(self, model):
        self.model, self.calls, self.live = model, [], None

    def acquire(self, unit, phase):
        assert self.live is None, "one unit at a time"
        p = {n: self.model.params[n].copy() for n in unit.reads}
        g = None if phase == "forward" else {n: np.zeros_like(self.model.grads[n]) for n in unit.reads}
        self.live = (p, g)
        self.calls.append(("acquire", unit, phase))
        return p, g

    def release(self, unit, phase):
        p, g = self.live
        for a in p.values():
            a.fill(np.nan)                                     # freed: a cache must not hold it
        if g is not None:
            for n, a in g.items():
                self.model.grads[n] += a
        self.live = None
        self.calls.append(("release", unit, phase))


@TIES
def test_copying_source_gives_the_resident_gradients(tie):
    cfg, model = generic_model(tie)
    idx, targets = batch(cfg, B=3, T=8)
    loss = model.forward_backward(idx, targets)
    resident = model.grad_flat.copy()
    src = CopyingSource(model)
    assert model.forward_backward(idx, targets, source=src) == loss
    np.testing.assert_allclose(model.grad_flat, resident, rtol=1e-13, atol=1e-15)
    units = model.units
    expect = [(k, u, "forward") for u in units for k in ("acquire", "release")]
    expect += [(k, u, "backward") for u in reversed(units) for k in ("acquire", "release")]
    assert src.calls == expect
    src.calls.clear()
    np.testing.assert_array_equal(model.forward(idx, source=src), model.forward(idx))
    assert model.loss(idx, targets, source=src) == model.loss(idx, targets)
    assert [c[2] for c in src.calls] == ["forward"] * 4 * len(units)     # forward, then loss


def test_threaded_model_refuses_a_source():
    cfg = small_cfg()
    threaded = ThreadedGPT(GPT(cfg, dtype="float64"), 2)
    idx, targets = batch(cfg, B=4, T=8)
    with pytest.raises(ValueError):
        threaded.forward_backward(idx, targets, source=CopyingSource(threaded.model))


# ---------------------------------------------------------------------------------------- hooks
class ScaleHooks:
    """Forward and backward of y = 2 x at both hook sites."""

    def column_in(self, x):
        return 2.0 * x

    def column_in_backward(self, dx):
        return 2.0 * dx

    def row_out(self, y):
        return 2.0 * y

    def row_out_backward(self, dy):
        return 2.0 * dy


@TIES
def test_scaled_hooks_gradients_match_finite_differences_of_the_hooked_model(tie):
    cfg, model = generic_model(tie, n_layer=1, hooks=ScaleHooks())
    _, plain = generic_model(tie, n_layer=1)
    idx, targets = batch(cfg, B=2, T=5)
    loss = model.forward_backward(idx, targets)
    assert loss != plain.loss(idx, targets)                    # the hooks do change the model
    analytic = model.grad_flat.copy()
    numeric = numeric_grad(lambda: model.loss(idx, targets), model.flat)
    for s in model.layout.slots:
        a, n = analytic[s.offset:s.offset + s.size], numeric[s.offset:s.offset + s.size]
        assert rel_err(a, n) <= 1e-6, s.name


class RecordingHooks(U.IdentityHooks):
    def __init__(self, zero_row_out=False):
        self.calls, self.zero_row_out = [], zero_row_out

    def column_in(self, x):
        self.calls.append(("column_in", x.shape))
        return x

    def column_in_backward(self, dx):
        self.calls.append(("column_in_backward", dx.shape))
        return dx

    def row_out(self, y):
        self.calls.append(("row_out", y.shape))
        return 0.0 * y if self.zero_row_out else y

    def row_out_backward(self, dy):
        self.calls.append(("row_out_backward", dy.shape))
        return dy


def test_hooks_are_called_in_order_with_n_by_c_and_row_out_comes_before_the_bias():
    cfg, model = generic_model(True)
    hooks = RecordingHooks()
    block = U.Block(0, cfg.n_head, hooks)
    B, T, C = 2, 5, cfg.n_embd
    x = np.random.default_rng(1).normal(size=(B * T, C))
    y, cache = block.forward(model.params, x, B, T)
    y_plain, _ = model.units[1].forward(model.params, x, B, T)
    np.testing.assert_array_equal(y, y_plain)                  # identity hooks: the plain block
    assert hooks.calls == [("column_in", (B * T, C)), ("row_out", (B * T, C))] * 2
    hooks.calls.clear()
    block.backward(model.params, model.layout.views(np.zeros_like(model.grad_flat)), np.ones_like(y), cache)
    assert hooks.calls == [("row_out_backward", (B * T, C)), ("column_in_backward", (B * T, C))] * 2
    # with both c_proj products zeroed by row_out, only their biases reach the residual stream
    y0, _ = U.Block(0, cfg.n_head, RecordingHooks(zero_row_out=True)).forward(model.params, x, B, T)
    p = model.params
    np.testing.assert_allclose(y0, x + p["h.0.attn.c_proj.bias"] + p["h.0.mlp.c_proj.bias"], rtol=1e-15)


# ---------------------------------------------------------------------------------------- activation bytes
def test_activation_bytes_counts_each_distinct_array_once():
    a, b = np.zeros((3, 4)), np.zeros(5, dtype=np.float32)
    assert U.activation_bytes(U.EmbeddingCache(a)) == 96
    assert U.activation_bytes([(a, b), [a, None, 3], (b,)]) == 96 + 20
    assert U.activation_bytes([]) == 0


@TIES
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_activation_bytes_of_the_caches_equal_their_arrays(tie, dtype):
    cfg, model = generic_model(tie, dtype)
    B, T = 3, 6
    idx, targets = batch(cfg, B, T)
    _, caches = U.forward_units(model.units, model.resident, idx, B, T, targets)
    N, C, H, V = B * T, cfg.n_embd, cfg.n_head, cfg.vocab_size
    e = np.dtype(dtype).itemsize
    block = e * (5 * N * C + 2 * N + 3 * N * C + B * H * T * T + 3 * N * 4 * C)  # ln xhat+rstd x2, 3 inputs, qkv heads, att, gelu h/t/out
    head = e * (2 * N * C + N + N * V) + targets.itemsize * N                      # xhat, rstd, xf, probs; targets
    expect = [idx.nbytes] + [block] * cfg.n_layer + [head]
    assert [U.activation_bytes(c) for c in caches] == expect
    for c in caches:                                            # activations only, never parameters
        stack = [c]
        while stack:
            item = stack.pop()
            if isinstance(item, tuple):
                stack.extend(item)
            else:
                assert not np.shares_memory(item, model.flat)
    model.forward_backward(idx, targets)
    assert model.activation_bytes_peak == sum(expect)


def test_threaded_activation_bytes_peak_is_the_slices_sum():
    cfg = small_cfg()
    plain, threaded = GPT(cfg, dtype="float64"), ThreadedGPT(GPT(cfg, dtype="float64"), 2)
    idx, targets = batch(cfg, B=4, T=8)
    plain.forward_backward(idx, targets)
    threaded.forward_backward(idx, targets)
    assert threaded.activation_bytes_peak == plain.activation_bytes_peak > 0
