"""HDF5 checkpoints: the flat parameter buffer, flat optimizer states, step, RNG state, config.

Layout of a checkpoint file (format "hpclm-checkpoint", version 1):
    /params                 (P,) the flat parameter buffer
    /optim/<state>          (P,) each optimizer state buffer (exp_avg, exp_avg_sq, momentum, ...)
    /extra/<name>           any other named arrays (e.g. error-feedback residuals)
    attrs: format, version, step (the next step to run; also the data position, since batches are
           a function of (seed, step)), optim_t, config_json, tokenizer_json, layout_json
           (name, shape, offset per tensor), rng_state_json, hpclm_version
Written to a temporary file in the same directory, fsynced, then renamed over the target, so a
crash never leaves a half-written file under the checkpoint's name.
"""
import json
import os

import h5py
import numpy as np

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.version import __version__

FORMAT = "hpclm-checkpoint"
VERSION = 1
FILE_NAME = "ckpt.h5"


def save(path, *, params, layout, optim_state, step, config_json, tokenizer_json, rng_state, extra=None):
    """Atomically write a checkpoint at `step`: `params` the whole flat parameter buffer (layout: a
    model.params.ParamLayout), `optim_state` the optimizer's state_dict in the same flat layout."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("params", data=X.to_host(params))
            state = optim_state
            for name, buf in state.items():
                if name != "t":
                    f.create_dataset(f"optim/{name}", data=X.to_host(buf))
            for name, arr in (extra or {}).items():
                f.create_dataset(f"extra/{name}", data=X.to_host(arr))
            f.attrs.update(format=FORMAT, version=VERSION, step=int(step), optim_t=int(state["t"]),
                           config_json=config_json, tokenizer_json=tokenizer_json,
                           layout_json=json.dumps(layout.index()),
                           rng_state_json=json.dumps(rng_state), hpclm_version=__version__)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Checkpoint:
    """A checkpoint read back into host memory, checked for integrity."""

    def __init__(self, path):
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            self.path = os.path.join(self.path, FILE_NAME)
        if not os.path.isfile(self.path):
            raise UserError(f"checkpoint not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise UserError(f"{self.path} is not an hpclm checkpoint (no format={FORMAT} attribute)")
                if int(f.attrs["version"]) != VERSION:
                    raise UserError(f"{self.path}: checkpoint version {f.attrs['version']} is not supported (expected {VERSION})")
                self.params = f["params"][...]
                self.optim = {name: ds[...] for name, ds in f.get("optim", {}).items()}
                self.extra = {name: ds[...] for name, ds in f.get("extra", {}).items()}
                a = f.attrs
                self.step, self.optim_t = int(a["step"]), int(a["optim_t"])
                self.config_json, self.tokenizer_json = str(a["config_json"]), str(a["tokenizer_json"])
                self.layout = json.loads(a["layout_json"])
                self.rng_state = json.loads(a["rng_state_json"])
        except UserError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"checkpoint {self.path} is corrupt or truncated: {exc}") from None
        if not np.all(np.isfinite(self.params)):
            raise UserError(f"checkpoint {self.path} holds non-finite parameters")

    def restore(self, model, optimizer):
        """Copy parameters and optimizer state into `model` and `optimizer` after checking the layout."""
        self.restore_params(model)
        optimizer.load_state_dict({"t": self.optim_t, **self.optim})

    def restore_params(self, model):
        """Copy the parameters into `model` after checking that its layout is the checkpoint's."""
        self.check_layout(model.layout)
        model.flat[...] = X.to_device(self.params.astype(model.dtype, copy=False))

    def check_layout(self, layout):
        """UserError unless the checkpoint's tensors are those of `layout` (names and shapes, in order)."""
        mine = [(name, list(shape)) for name, shape, _ in layout.index()]
        theirs = [(name, list(shape)) for name, shape, _ in self.layout]
        if mine != theirs or self.params.shape != (layout.size,):
            stored = dict(theirs)
            diff = [f"{name}: checkpoint {stored.get(name)} vs model {shape}"
                    for name, shape in mine if stored.get(name) != shape][:3]
            raise UserError(f"checkpoint {self.path} does not match the model's parameters "
                            f"({len(self.layout)} tensors vs {len(mine)}; {'; '.join(diff) or 'different names'})")
