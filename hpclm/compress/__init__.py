"""Gradient compressors, found by name (DESIGN.md decision 5; the contract is hpclm.compress.base).

    from hpclm.compress import build, build_with_memory, REGISTRY
    comp = build(cfg.compress, rank=rank)                  # a Compressor
    comp = build_with_memory(cfg.compress, n, dtype, rank)  # wrapped in ErrorFeedback when on

Compressors never touch MPI; hpclm.parallel moves their payloads.
"""
from hpclm.compress.base import (AGGREGATE_GATHER, AGGREGATE_LOW_RANK, AGGREGATE_SIGN_VOTE,  # noqa: F401
                                 AGGREGATE_SUM, Compressor, Context)
from hpclm.compress.bf16 import BF16
from hpclm.compress.ef_sign import EFSign
from hpclm.compress.fp16 import FP16
from hpclm.compress.int8 import Int8
from hpclm.compress.kmeans import KMeans
from hpclm.compress.memory import ErrorFeedback, build_with_memory, wants_memory  # noqa: F401
from hpclm.compress.none import NoCompression
from hpclm.compress.powersgd import PowerSGD, powersgd_bytes  # noqa: F401
from hpclm.compress.qsgd import QSGD
from hpclm.compress.randomk import RandomK
from hpclm.compress.signsgd import SignSGD, majority_vote  # noqa: F401
from hpclm.compress.terngrad import TernGrad
from hpclm.compress.threshold import Threshold
from hpclm.compress.topk import TopK
from hpclm.errors import UserError

REGISTRY = {
    "none": NoCompression,
    "fp16": FP16,
    "bf16": BF16,
    "int8": Int8,
    "qsgd": QSGD,
    "terngrad": TernGrad,
    "signsgd": SignSGD,
    "ef_sign": EFSign,
    "topk": TopK,
    "randomk": RandomK,
    "threshold": Threshold,
    "powersgd": PowerSGD,
    "kmeans": KMeans,
}


def build(cfg, rank=0):
    """The compressor named cfg.name, configured from the CompressConfig `cfg`. `rank` salts the
    randomness of compressors whose draws must be independent across ranks (stochastic rounding);
    shared draws (randomk indices) ignore it."""
    cls = REGISTRY.get(cfg.name)
    if cls is None:
        raise UserError(f"unknown compressor {cfg.name!r}; valid names: {', '.join(sorted(REGISTRY))}")
    return cls(cfg, rank=rank)
