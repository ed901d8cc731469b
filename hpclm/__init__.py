"""hpclm: communication-efficient training of GPT-style language models over MPI.

Layers (imports point down only, see README "Architecture"):
L0 config, xp, errors; L1 model/, compress/, comm/, timing/, data; L2 parallel/; L3 train, cli.
"""
from hpclm.version import __version__

__all__ = ["__version__"]
