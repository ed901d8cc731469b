"""hpclm.optim: flat updates against per-tensor textbook references (SGD, heavy-ball and Nesterov
momentum as PyTorch defines them, PyTorch's AdamW), nanoGPT's LR schedule, global-norm clipping,
and optimizer state round trips."""
import math

import numpy as np
import pytest

from hpclm.config import OptimConfig
from hpclm.errors import UserError
from hpclm.model.params import ParamLayout
from hpclm.optim import SGD, AdamW, Momentum, build_optimizer, clip_by_global_norm, global_norm, lr_at

SHAPES = [("wte", (5, 3)), ("h.0.ln_1.weight", (3,)), ("h.0.ln_1.bias", (3,)),
          ("h.0.mlp.c_fc.weight", (3, 4)), ("h.0.mlp.c_fc.bias", (4,))]
LAYOUT = ParamLayout(SHAPES)
DECAYED = {"wte", "h.0.mlp.c_fc.weight"}                       # the 2-D weights
STEPS = 4
LRS = [0.1, 0.05, 0.02, 0.01]


def make(cls, **kw):
    cfg = OptimConfig(**kw)
    return cls(cfg, LAYOUT.size, np.float64, LAYOUT.decay_mask(np, np.float64)), cfg


def problem(seed=0, grad_scale=1.0):
    rng = np.random.default_rng(seed)
    flat = rng.normal(size=LAYOUT.size)
    grads = [rng.normal(0.0, grad_scale, size=LAYOUT.size) for _ in range(STEPS)]
    return flat, grads


def run_flat(opt, flat, grads):
    flat = flat.copy()
    for g, lr in zip(grads, LRS):
        opt.step(flat, g.copy(), lr)
    return flat


def per_tensor(flat):
    return {k: v.copy() for k, v in LAYOUT.views(flat.copy()).items()}


def assert_same(flat, ref):
    for name, view in LAYOUT.views(flat).items():
        np.testing.assert_allclose(view, ref[name], rtol=1e-13, atol=1e-15, err_msg=name)


def test_decay_mask_selects_2d_weights_only():
    mask = LAYOUT.decay_mask(np, np.float64)
    for name, view in LAYOUT.views(mask).items():
        assert np.all(view == (1.0 if name in DECAYED else 0.0)), name


# ---------------------------------------------------------------------------------------- SGD / momentum

@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_sgd(wd):
    opt, _ = make(SGD, name="sgd", weight_decay=wd)
    flat, grads = problem()
    ref = per_tensor(flat)
    for g, lr in zip(grads, LRS):
        for name, gv in LAYOUT.views(g).items():
            if name in DECAYED:                                # decoupled, as documented in hpclm.optim
                ref[name] *= 1 - lr * wd
            ref[name] -= lr * gv
    assert_same(run_flat(opt, flat, grads), ref)


@pytest.mark.parametrize("nesterov", [False, True], ids=["heavy_ball", "nesterov"])
def test_momentum_as_pytorch(nesterov):
    """torch.optim.SGD(momentum=mu, dampening=0, nesterov=...): b = mu b + g (b = g at the first step);
    heavy ball p -= lr b; Nesterov p -= lr (g + mu b)."""
    mu = 0.8
    opt, _ = make(Momentum, name="momentum", momentum=mu, nesterov=nesterov, weight_decay=0.0)
    flat, grads = problem(1)
    ref = per_tensor(flat)
    buf = {}
    for g, lr in zip(grads, LRS):
        for name, gv in LAYOUT.views(g).items():
            buf[name] = gv.copy() if name not in buf else mu * buf[name] + gv
            step = gv + mu * buf[name] if nesterov else buf[name]
            ref[name] = ref[name] - lr * step
    out = run_flat(opt, flat, grads)
    assert_same(out, ref)
    assert_same(opt.state["momentum"], buf)


def test_momentum_with_decoupled_weight_decay():
    mu, wd = 0.9, 0.2
    opt, _ = make(Momentum, name="momentum", momentum=mu, weight_decay=wd)
    flat, grads = problem(2)
    ref, buf = per_tensor(flat), {k: 0.0 for k, _ in SHAPES}
    for g, lr in zip(grads, LRS):
        for name, gv in LAYOUT.views(g).items():
            if name in DECAYED:
                ref[name] *= 1 - lr * wd
            buf[name] = mu * buf[name] + gv
            ref[name] -= lr * buf[name]
    assert_same(run_flat(opt, flat, grads), ref)


# ---------------------------------------------------------------------------------------- AdamW

def adamw_reference(flat, grads, b1, b2, eps, wd, freeze=0):
    """torch.optim.AdamW, per tensor: p *= 1 - lr wd (2-D weights only); Adam step with bias correction.
    freeze = F > 0: v and its bias correction stay as they were after update F (1-bit Adam)."""
    ref = per_tensor(flat)
    m = {k: np.zeros(s) for k, s in SHAPES}
    v = {k: np.zeros(s) for k, s in SHAPES}
    for t, (g, lr) in enumerate(zip(grads, LRS), start=1):
        for name, gv in LAYOUT.views(g).items():
            if name in DECAYED:
                ref[name] = ref[name] * (1 - lr * wd)
            m[name] = b1 * m[name] + (1 - b1) * gv
            t_v = min(t, freeze) if freeze else t
            if t_v == t:
                v[name] = b2 * v[name] + (1 - b2) * gv * gv
            m_hat = m[name] / (1 - b1 ** t)
            v_hat = v[name] / (1 - b2 ** t_v)
            ref[name] = ref[name] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return ref, m, v


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_as_pytorch(wd):
    # small gradients and a large eps: eps placement (outside the sqrt, after bias correction) matters
    b1, b2, eps = 0.9, 0.95, 1e-3
    opt, _ = make(AdamW, beta1=b1, beta2=b2, eps=eps, weight_decay=wd)
    flat, grads = problem(3, grad_scale=1e-3)
    ref, m, v = adamw_reference(flat, grads, b1, b2, eps, wd)
    assert_same(run_flat(opt, flat, grads), ref)
    assert_same(opt.state["exp_avg"], m)
    assert_same(opt.state["exp_avg_sq"], v)
    assert opt.t == STEPS


@pytest.mark.parametrize("freeze", [1, 2])
def test_adamw_frozen_variance(freeze):
    """optim.freeze_variance_step: v stops at its value after update `freeze`; m and the rest go on."""
    b1, b2, eps = 0.9, 0.95, 1e-3
    opt, _ = make(AdamW, beta1=b1, beta2=b2, eps=eps, weight_decay=0.1, freeze_variance_step=freeze)
    flat, grads = problem(5, grad_scale=1e-3)
    ref, m, v = adamw_reference(flat, grads, b1, b2, eps, 0.1, freeze=freeze)
    frozen_v = adamw_reference(flat, grads[:freeze], b1, b2, eps, 0.1)[2]
    out = run_flat(opt, flat, grads)
    assert_same(out, ref)
    assert_same(opt.state["exp_avg_sq"], v)
    assert_same(opt.state["exp_avg_sq"], frozen_v)
    unfrozen, _ = make(AdamW, beta1=b1, beta2=b2, eps=eps, weight_decay=0.1)
    assert not np.allclose(run_flat(unfrozen, flat, grads), out)


def test_freeze_variance_step_is_checked():
    with pytest.raises(UserError, match="freeze_variance_step"):
        OptimConfig(freeze_variance_step=-1).validate()


@pytest.mark.parametrize("name", ["sgd", "momentum", "adamw"])
def test_weight_decay_spares_biases_and_layernorm(name):
    """With zero gradients, only decay moves parameters: 2-D weights shrink by (1 - lr wd), the rest stay."""
    opt, _ = make({"sgd": SGD, "momentum": Momentum, "adamw": AdamW}[name], name=name, weight_decay=0.5)
    flat = np.random.default_rng(4).normal(size=LAYOUT.size)
    out = flat.copy()
    opt.step(out, np.zeros(LAYOUT.size), 0.1)
    before, after = LAYOUT.views(flat), LAYOUT.views(out)
    for n in before:
        expect = before[n] * (1 - 0.1 * 0.5) if n in DECAYED else before[n]
        np.testing.assert_allclose(after[n], expect, rtol=1e-15, err_msg=n)


def test_build_optimizer_uses_the_model_layout_and_mask():
    class FakeModel:
        layout, dtype = LAYOUT, np.dtype(np.float32)
    opt = build_optimizer(OptimConfig(name="adamw"), FakeModel)
    assert isinstance(opt, AdamW)
    assert opt.state["exp_avg"].shape == (LAYOUT.size,) and opt.state["exp_avg"].dtype == np.float32
    np.testing.assert_array_equal(opt.decay_mask, LAYOUT.decay_mask(np, np.float32))
    assert isinstance(build_optimizer(OptimConfig(name="momentum"), FakeModel), Momentum)
    assert isinstance(build_optimizer(OptimConfig(name="sgd"), FakeModel), SGD)


# ---------------------------------------------------------------------------------------- LR schedule

def nanogpt_get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """nanoGPT train.py get_lr, verbatim."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    assert 0 <= decay_ratio <= 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


@pytest.mark.parametrize("decay_steps,max_steps", [(100, 1000), (0, 100)])
def test_lr_schedule_matches_nanogpt(decay_steps, max_steps):
    cfg = OptimConfig(lr=6e-4, min_lr=6e-5, warmup_steps=10, decay_steps=decay_steps)
    for step in [0, 1, 5, 9, 10, 11, 37, 55, 99, 100, 101, 150, 5000]:
        expect = nanogpt_get_lr(step, 6e-4, 6e-5, 10, 100)
        assert lr_at(step, cfg, max_steps) == pytest.approx(expect, rel=1e-12, abs=1e-18), step
    assert lr_at(0, cfg, max_steps) == pytest.approx(6e-4 / 11)
    assert lr_at(10, cfg, max_steps) == pytest.approx(6e-4)       # peak right after warm-up
    assert lr_at(55, cfg, max_steps) == pytest.approx((6e-4 + 6e-5) / 2)   # half way down the cosine


def test_lr_schedule_without_warmup():
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=10)
    assert [lr_at(s, cfg, 10) for s in (0, 5, 10, 11)] == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-15)


# ---------------------------------------------------------------------------------------- clipping

def test_clip_scales_large_gradient_to_max_norm():
    g = np.random.default_rng(5).normal(size=100)
    g *= 5.0 / np.linalg.norm(g)
    direction = g / 5.0
    norm = clip_by_global_norm(g, 1.0)
    assert norm == pytest.approx(5.0, rel=1e-12)
    assert np.linalg.norm(g) == pytest.approx(1.0, rel=1e-5)
    assert np.linalg.norm(g) <= 1.0
    np.testing.assert_allclose(g / np.linalg.norm(g), direction, rtol=1e-12)


def test_clip_leaves_small_gradient_untouched():
    g = np.random.default_rng(6).normal(size=50)
    g *= 0.5 / np.linalg.norm(g)
    before = g.copy()
    assert clip_by_global_norm(g, 1.0) == pytest.approx(0.5, rel=1e-12)
    np.testing.assert_array_equal(g, before)
    g *= 100.0
    before = g.copy()
    assert clip_by_global_norm(g, 0.0) == pytest.approx(50.0, rel=1e-12)  # 0 = off
    np.testing.assert_array_equal(g, before)
    assert global_norm(np.array([3.0, 4.0], dtype=np.float32)) == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------- state

@pytest.mark.parametrize("kw", [dict(name="momentum"), dict(name="momentum", nesterov=True), dict(name="adamw")],
                         ids=["momentum", "nesterov", "adamw"])
def test_state_dict_round_trip_continues_identically(kw):
    cls = {"momentum": Momentum, "adamw": AdamW}[kw["name"]]
    a, _ = make(cls, weight_decay=0.1, **kw)
    flat, grads = problem(7)
    p = flat.copy()
    for g, lr in zip(grads[:2], LRS):
        a.step(p, g, lr)
    saved = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in a.state_dict().items()}
    assert saved["t"] == 2
    p_saved = p.copy()
    for g, lr in zip(grads[2:], LRS[2:]):
        a.step(p, g, lr)
    b, _ = make(cls, weight_decay=0.1, **kw)
    b.load_state_dict(saved)
    for k in saved:                                            # loaded by copy, not aliased
        if isinstance(saved[k], np.ndarray):
            saved[k][...] = np.nan
    q = p_saved.copy()
    for g, lr in zip(grads[2:], LRS[2:]):
        b.step(q, g, lr)
    np.testing.assert_array_equal(q, p)
    assert b.t == a.t == STEPS
    for name in a.state:
        np.testing.assert_array_equal(b.state[name], a.state[name])


def test_load_state_dict_rejects_wrong_size_or_missing_state():
    opt, _ = make(AdamW)
    good = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in opt.state_dict().items()}
    bad = dict(good, exp_avg=np.zeros(LAYOUT.size + 1))
    with pytest.raises(UserError):
        opt.load_state_dict(bad)
    missing = {k: v for k, v in good.items() if k != "exp_avg_sq"}
    with pytest.raises(UserError):
        opt.load_state_dict(missing)
    mom, _ = make(Momentum, name="momentum")
    with pytest.raises(UserError):
        mom.load_state_dict({"t": 3, "momentum": np.zeros(LAYOUT.size - 2)})
    opt.load_state_dict(good)                                  # the right one loads
