"""An independent, deliberately plain float64 GPT-2 forward pass for testing hpclm.model.GPT.

It reads parameters only by their GPT-2 names (a dict name -> array, weights stored (in, out)) and
shares no code with hpclm.model: per-token LayerNorm, per-sequence and per-head attention loops
with an explicit causal mask, the tanh GELU written out, and a per-row log-softmax.
"""
import math

import numpy as np


def layernorm(x, weight, bias, eps=1e-5):
    out = np.empty_like(x)
    for t in range(x.shape[0]):
        mu = sum(x[t]) / len(x[t])
        var = sum((x[t] - mu) ** 2) / len(x[t])
        out[t] = (x[t] - mu) / math.sqrt(var + eps) * weight + bias
    return out


def gelu(h):
    return 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))


def softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def attention(x, c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_head):
    """x (T, C) for one sequence -> (T, C)."""
    T, C = x.shape
    D = C // n_head
    qkv = x @ c_attn_w + c_attn_b                              # (T, 3C) = [q | k | v]
    mask = np.zeros((T, T))
    for t in range(T):
        for s in range(T):
            if s > t:
                mask[t, s] = -np.inf
    y = np.zeros((T, C))
    for h in range(n_head):
        q = qkv[:, 0 * C + h * D:0 * C + (h + 1) * D]
        k = qkv[:, 1 * C + h * D:1 * C + (h + 1) * D]
        v = qkv[:, 2 * C + h * D:2 * C + (h + 1) * D]
        for t in range(T):
            scores = np.array([q[t] @ k[s] for s in range(T)]) / math.sqrt(D) + mask[t]
            w = softmax(scores)
            y[t, h * D:(h + 1) * D] = sum(w[s] * v[s] for s in range(T))
    return y @ c_proj_w + c_proj_b


def logits(params, idx, n_layer, n_head, tie_weights=True):
    """params: name -> array (GPT-2 names); idx (B, T) ints -> logits (B, T, V) in float64."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    B, T = idx.shape
    out = []
    for b in range(B):
        x = np.stack([p["wte"][idx[b, t]] + p["wpe"][t] for t in range(T)])   # (T, C)
        for i in range(n_layer):
            h = f"h.{i}."
            a = layernorm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"])
            x = x + attention(a, p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"],
                              p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"], n_head)
            m = layernorm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"])
            x = x + gelu(m @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"]) @ p[h + "mlp.c_proj.weight"] \
                + p[h + "mlp.c_proj.bias"]
        xf = layernorm(x, p["ln_f.weight"], p["ln_f.bias"])
        head = p["wte"].T if tie_weights else p["lm_head.weight"]                 # (C, V)
        out.append(xf @ head)
    return np.stack(out)


def loss(params, idx, targets, n_layer, n_head, tie_weights=True):
    """Mean cross-entropy of targets (B, T)."""
    lg = logits(params, idx, n_layer, n_head, tie_weights)
    nll = []
    for b in range(idx.shape[0]):
        for t in range(idx.shape[1]):
            row = lg[b, t]
            lse = row.max() + math.log(np.exp(row - row.max()).sum())
            nll.append(lse - row[targets[b, t]])
    return sum(nll) / len(nll)
