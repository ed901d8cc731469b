"""The GPT model: hand-written forward/backward over flat parameter and gradient buffers."""
from hpclm.model.gpt import GPT
from hpclm.model.params import ParamLayout, gpt2_shapes

__all__ = ["GPT", "ParamLayout", "gpt2_shapes"]
