"""`hpclm sample`: generate text from a checkpoint (temperature and top-k sampling)."""
import math
import sys

import numpy as np

from hpclm import checkpoint as ckpt_io
from hpclm import xp as X
from hpclm.config import config_from_json
from hpclm.data import tokenizer_from_json
from hpclm.errors import UserError
from hpclm.model import GPT


def add_arguments(p):
    p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint file or run directory")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--tokens", type=int, default=500, help="number of tokens to generate")
    p.add_argument("--temperature", type=float, default=0.8, help="divides the logits (> 0; lower = more likely tokens)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="where the model runs")


def generate(model, ids, n_tokens, temperature, top_k, rng):
    """Append n_tokens sampled tokens to the 1-D host array `ids`; returns the whole sequence."""
    T = model.cfg.block_size
    out = list(ids)
    for _ in range(n_tokens):
        context = X.to_device(np.asarray(out[-T:], dtype=np.int64)[None])     # (1, t)
        logits = X.to_host(model.forward(context)[0, -1]).astype(np.float64)   # (V,)
        logits /= temperature
        if 0 < top_k < logits.size:
            logits[logits < np.partition(logits, -top_k)[-top_k]] = -np.inf
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        out.append(int(rng.choice(probs.size, p=probs)))
    return out


def run(args):
    if args.tokens < 0 or not args.temperature > 0 or not math.isfinite(args.temperature):
        raise UserError("--tokens must be >= 0 and --temperature a finite number > 0")
    if args.top_k < 0:
        raise UserError(f"--top-k must be >= 0 (0 = all tokens), got {args.top_k}")
    X.use(args.device)
    ckpt = ckpt_io.Checkpoint(args.checkpoint)
    cfg = config_from_json(ckpt.config_json)
    tokenizer = tokenizer_from_json(ckpt.tokenizer_json)
    model = GPT(cfg.model, dtype=cfg.train.dtype)
    ckpt.restore_params(model)
    prompt = tokenizer.encode(args.prompt).astype(np.int64)
    if prompt.size == 0:
        raise UserError("--prompt must contain at least one token")
    ids = generate(model, prompt, args.tokens, args.temperature, args.top_k, np.random.default_rng(args.seed))
    sys.stdout.write(tokenizer.decode(np.asarray(ids)) + "\n")
    return 0
