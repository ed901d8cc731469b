"""The compressor contract (GRACE's split: compressor / memory / communicator; no MPI here).

A compressor turns a flat gradient slice (n,) into a *payload* (a tuple of arrays that travel)
plus a local *context* (what the receiver-side decompress needs but that does not travel, e.g.
the original size or a shared seed), and back. It declares how payloads combine across ranks:

    AGGREGATE_SUM        payloads can be summed element-wise on the wire (all-reduce works):
                         none, fp16, bf16, randomk (indices from a shared seed: only values travel)
    AGGREGATE_GATHER     payloads must be all-gathered and each decompressed, then summed:
                         int8, qsgd, terngrad, ef_sign, topk, threshold, kmeans
    AGGREGATE_SIGN_VOTE  1-bit signs combined by majority vote (signsgd)
    AGGREGATE_LOW_RANK   PowerSGD's P/Q all-reduces, run by hpclm.parallel (needs matrix shapes)

Communicating payloads is the job of hpclm/parallel/compressed.py, which passes the communicator.
Error feedback is a separate wrapper (hpclm/compress/memory.py) around any compressor.
"""
from dataclasses import dataclass

AGGREGATE_SUM = "sum"
AGGREGATE_GATHER = "gather"
AGGREGATE_SIGN_VOTE = "sign_vote"
AGGREGATE_LOW_RANK = "low_rank"


@dataclass
class Context:
    """What decompress needs that does not travel: element count, dtype, and per-call extras."""
    n: int
    dtype: object
    extra: object = None


class Compressor:
    """Base class. Subclasses set `name`, `aggregate`, and implement compress/decompress/payload_bytes."""

    name = "base"
    aggregate = AGGREGATE_GATHER
    wire_sum = None   # AGGREGATE_SUM only: an in-place (acc, other) reduction of one payload array for
                      # dtypes MPI cannot add (bf16 bits) or adds slowly (fp16); hpclm.comm.ops

    def __init__(self, cfg=None, rank=0):
        """Built as cls(cfg, rank) by the registry; compressors without parameters ignore both."""

    def compress(self, grad, step=0):
        """grad (n,) -> (payload: tuple of arrays, ctx: Context). `step` seeds any randomness so
        that ranks sharing a seed draw the same indices (randomk) and runs are reproducible."""
        raise NotImplementedError

    def decompress(self, payload, ctx):
        """payload, ctx -> (n,) array of ctx.dtype."""
        raise NotImplementedError

    def payload_bytes(self, n, itemsize=4):
        """Bytes that travel for one rank's payload of an n-element gradient (the closed form
        the byte counters are tested against)."""
        raise NotImplementedError

    # Optional, compatible extensions (defaults for stateless compressors):

    def state_dict(self):
        """Arrays/values to checkpoint (e.g. PowerSGD's warm-start Q); {} when stateless."""
        return {}

    def load_state_dict(self, state):
        """Restore what state_dict returned."""


class SixteenBit(Compressor):
    """What fp16 and bf16 share: payload = (encode(g) (n,) 16-bit,); 2 n bytes; summable on the
    wire with the subclass's `wire_sum`. Subclasses set name, encode, decode and wire_sum (static)."""

    aggregate = AGGREGATE_SUM
    is_bf16 = False   # the 16-bit format, for the compiled decode into `out`

    def compress(self, grad, step=0):
        return (self.encode(grad),), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx, out=None):
        """out: an optional (n,) float32 buffer the compiled kernel writes into."""
        from hpclm.compress.bits import compiled
        if out is not None and compiled(payload[0]) and out.dtype == ctx.dtype == "float32":
            from hpclm.compress import cpu
            return cpu.from_16(payload[0], self.is_bf16, out)
        return self.decode(payload[0]).astype(ctx.dtype, copy=False)

    def payload_bytes(self, n, itemsize=4):
        return 2 * n


def payload_nbytes(payload):
    """Bytes that actually travel for a payload (sum of its arrays' nbytes)."""
    return int(sum(a.nbytes for a in payload))
