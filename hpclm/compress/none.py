"""`none`: the identity. Travels: the gradient itself, n * itemsize bytes. Summable (all-reduce)."""
from hpclm.compress.base import AGGREGATE_SUM, Compressor, Context


class NoCompression(Compressor):
    """payload = (g,) unchanged; n * itemsize bytes."""

    name = "none"
    aggregate = AGGREGATE_SUM

    def compress(self, grad, step=0):
        return (grad,), Context(grad.size, grad.dtype)

    def decompress(self, payload, ctx):
        return payload[0]

    def payload_bytes(self, n, itemsize=4):
        return n * itemsize

    def combine(self, a, b):
        return (a[0] + b[0],)
