"""Optimizers on flat buffers (one vectorised update per step), the LR schedule and gradient clipping.

Every state buffer mirrors the flat parameter layout, so a ZeRO shard or a checkpoint of the state
is a slice or one dataset. Weight decay is decoupled (AdamW style) and applies where `decay_mask`
is 1: the 2-D weights, as GPT-2/nanoGPT do; biases and LayerNorm gains are not decayed.
"""
import math

import numpy

from hpclm import kernels
from hpclm import xp as X
from hpclm.errors import UserError


def lr_at(step, cfg, max_steps):
    """nanoGPT's schedule: linear warm-up over warmup_steps, cosine decay to min_lr at decay_steps."""
    decay_steps = cfg.decay_steps or max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / (cfg.warmup_steps + 1)
    if step >= decay_steps:
        return cfg.min_lr
    ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def global_norm(grad_flat):
    """L2 norm of the whole gradient (float)."""
    xp = X.array_module(grad_flat)
    return float(xp.sqrt(xp.dot(grad_flat, grad_flat)))


def clip_by_global_norm(grad_flat, max_norm, norm=None):
    """Scale the gradient in place so its global L2 norm is at most max_norm (0 = off). Returns the norm before.
    norm: the global norm when grad_flat is a part of the gradient (a tensor-parallel shard)."""
    norm = global_norm(grad_flat) if norm is None else norm
    if max_norm > 0 and norm > max_norm:
        grad_flat *= max_norm / (norm + 1e-6)
    return norm


class Optimizer:
    """Base: holds flat state buffers by name; subclasses implement `_update(params, grads, lr)`."""

    state_names = ()

    def __init__(self, cfg, size, dtype, decay_mask):
        xp = X.np
        self.cfg = cfg
        self.t = 0                                             # number of updates applied
        self.decay_mask = decay_mask                           # (size,) 1 where weight decay applies
        self.state = {name: xp.zeros(size, dtype=dtype) for name in self.state_names}
        self._scratch = xp.empty(size, dtype=dtype)            # reused every step

    def step(self, params, grads, lr):
        self.t += 1
        self.decay(params, lr)
        self._update(params, grads, lr)

    def decay(self, params, lr):
        """Decoupled weight decay: p -= lr * wd * mask * p."""
        wd = self.cfg.weight_decay
        if wd > 0:
            X.array_module(params).multiply(params, self.decay_mask, out=self._scratch)
            self._scratch *= lr * wd
            params -= self._scratch

    def state_dict(self):
        return {"t": self.t, **self.state}

    def load_state_dict(self, saved):
        for name, buf in self.state.items():
            if name not in saved or saved[name].shape != buf.shape:
                raise UserError(f"checkpoint optimizer state {name!r} is missing or has the wrong size")
            buf[...] = X.to_device(saved[name])
        self.t = int(saved["t"])


class SGD(Optimizer):
    def _update(self, params, grads, lr):
        X.array_module(params).multiply(grads, lr, out=self._scratch)
        params -= self._scratch


class Momentum(Optimizer):
    """Heavy-ball: buf = mu buf + g, p -= lr buf. Nesterov: p -= lr (g + mu buf)."""

    state_names = ("momentum",)

    def _update(self, params, grads, lr):
        buf, mu = self.state["momentum"], self.cfg.momentum
        buf *= mu
        buf += grads
        if self.cfg.nesterov:
            X.array_module(params).multiply(buf, mu, out=self._scratch)
            self._scratch += grads
            self._scratch *= lr
        else:
            X.array_module(params).multiply(buf, lr, out=self._scratch)
        params -= self._scratch


class AdamW(Optimizer):
    """Adam with bias correction; p -= lr * m_hat / (sqrt(v_hat) + eps).

    With cfg.freeze_variance_step = F > 0, v (and its bias correction) stop changing after update F:
    1-bit Adam's frozen variance (Tang et al. 2021). The update is then linear in the gradient, so
    an error-feedback compressor's delayed, bursty gradients add up to the uncompressed updates,
    which Adam's per-coordinate normalisation by a moving v would not do. The state needs no flag:
    the step count says whether v is frozen.

    The update is two halves, `update_moments(grads)` then `apply_moments(params, lr)`, so that
    1-bit Adam (hpclm.parallel.onebit_adam) can replace m by its compressed average in between."""

    state_names = ("exp_avg", "exp_avg_sq")

    def step(self, params, grads, lr):
        if not (isinstance(params, numpy.ndarray) and kernels.enabled()):
            return super().step(params, grads, lr)
        self.t += 1                                            # decay and update: one compiled pass (hpclm.model.fused)
        from hpclm.model.fused import adamw_update
        b1, b2, t_v, wd = self.cfg.beta1, self.cfg.beta2, self._updates_of_v(), self.cfg.weight_decay
        adamw_update(params, grads, self.state["exp_avg"], self.state["exp_avg_sq"], b1, b2, self.cfg.eps, lr,
                     1.0 - b1 ** self.t, 1.0 - b2 ** t_v, update_m=True, update_v=t_v == self.t,
                     decay_mask=self.decay_mask if wd > 0 else None, lr_wd=lr * wd)

    def _update(self, params, grads, lr):
        self.update_moments(grads)
        self.apply_moments(params, lr)

    def _updates_of_v(self):
        """Updates that v has seen (all of them, or freeze_variance_step once frozen)."""
        freeze = self.cfg.freeze_variance_step
        return min(self.t, freeze) if freeze else self.t

    def update_moments(self, grads):
        """m <- beta1 m + (1 - beta1) g; v likewise with g^2 unless frozen."""
        xp = X.array_module(grads)
        b1, b2 = self.cfg.beta1, self.cfg.beta2
        m, v, tmp = self.state["exp_avg"], self.state["exp_avg_sq"], self._scratch
        m *= b1
        xp.multiply(grads, 1.0 - b1, out=tmp)
        m += tmp
        if self._updates_of_v() == self.t:
            v *= b2
            xp.multiply(grads, grads, out=tmp)
            tmp *= 1.0 - b2
            v += tmp

    def apply_moments(self, params, lr):
        """p -= lr * m_hat / (sqrt(v_hat) + eps), with the bias corrections of this step."""
        if isinstance(params, numpy.ndarray) and kernels.enabled():
            from hpclm.model.fused import adamw_update
            b1, b2 = self.cfg.beta1, self.cfg.beta2
            adamw_update(params, params, self.state["exp_avg"], self.state["exp_avg_sq"], b1, b2, self.cfg.eps, lr,
                         1.0 - b1 ** self.t, 1.0 - b2 ** self._updates_of_v(), update_m=False, update_v=False)
            return
        xp = X.array_module(params)
        m, v, tmp = self.state["exp_avg"], self.state["exp_avg_sq"], self._scratch
        bias1 = 1.0 - self.cfg.beta1 ** self.t
        bias2 = 1.0 - self.cfg.beta2 ** self._updates_of_v()
        xp.sqrt(v, out=tmp)
        tmp *= 1.0 / math.sqrt(bias2)
        tmp += self.cfg.eps                                    # sqrt(v_hat) + eps
        xp.divide(m, tmp, out=tmp)
        tmp *= lr / bias1
        params -= tmp


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adamw": AdamW}


def build_optimizer(cfg, model):
    """The optimizer named by cfg.name, over the model's flat buffers."""
    mask = model.layout.decay_mask(X.np, model.dtype)
    return OPTIMIZERS[cfg.name](cfg, model.layout.size, model.dtype, mask)
