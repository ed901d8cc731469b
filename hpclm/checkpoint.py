"""HDF5 checkpoints: the flat parameter buffer, flat optimizer states, step, RNG state, config.

Layout of a checkpoint file (format "hpclm-checkpoint", version 2):
    /params                 (P,) the flat parameter buffer
    /optim/<state>          (P,) each optimizer state buffer (exp_avg, exp_avg_sq, momentum, ...)
    /extra/<name>           any other named arrays (e.g. error-feedback residuals)
    attrs: format, version, step (the next step to run; also the data position, since batches are
           a function of (seed, step)), optim_t, config_json, tokenizer_json, layout_json
           (name, shape, offset per tensor), rng_state_json, hpclm_version,
           sha256 (version 2: the digest of every dataset's bytes and every other attribute)
Loading recomputes the digest and refuses a file that does not match it (damage inside the
data, which HDF5 itself does not notice). Version 1 files (no digest) still load, unchecked.
Written to a temporary file in the same directory, fsynced, then renamed over the target, so a
crash never leaves a half-written file under the checkpoint's name.
"""
import hashlib
import json
import os

import h5py
import numpy as np

from hpclm import xp as X
from hpclm.errors import UserError
from hpclm.version import __version__

FORMAT = "hpclm-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
FILE_NAME = "ckpt.h5"


def save(path, *, params, layout, optim_state, step, config_json, tokenizer_json, rng_state, extra=None):
    """Atomically write a checkpoint at `step`: `params` the whole flat parameter buffer (layout: a
    model.params.ParamLayout), `optim_state` the optimizer's state_dict in the same flat layout."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        arrays = {"params": X.to_host(params)}
        arrays.update({f"optim/{name}": X.to_host(buf) for name, buf in optim_state.items() if name != "t"})
        arrays.update({f"extra/{name}": X.to_host(arr) for name, arr in (extra or {}).items()})
        attrs = dict(format=FORMAT, version=VERSION, step=int(step), optim_t=int(optim_state["t"]),
                     config_json=config_json, tokenizer_json=tokenizer_json,
                     layout_json=json.dumps(layout.index()),
                     rng_state_json=json.dumps(rng_state), hpclm_version=__version__)
        with h5py.File(tmp, "w") as f:
            for name, arr in arrays.items():
                f.create_dataset(name, data=arr)
            f.attrs.update(attrs, sha256=digest(arrays, attrs))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def digest(arrays, attrs):
    """SHA-256 (hex) over each array's name, dtype, shape and bytes, in name order, then the
    attributes (but the digest itself) as sorted JSON."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}\n".encode())
        h.update(a.data)
    plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in attrs.items() if k != "sha256"}
    h.update(json.dumps({k: (v.decode() if isinstance(v, bytes) else v) for k, v in plain.items()},
                        sort_keys=True).encode())
    return h.hexdigest()


def _arrays(f):
    """{path: array} of every dataset in the open file."""
    found = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj[...]) if isinstance(obj, h5py.Dataset) else None)
    return found


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
                version = int(f.attrs["version"])
                if version not in READABLE_VERSIONS:
                    raise UserError(f"{self.path}: checkpoint version {version} is not supported "
                                    f"(this hpclm reads {', '.join(map(str, READABLE_VERSIONS))})")
                arrays, a = _arrays(f), dict(f.attrs)
                if version >= 2 and a.get("sha256") != digest(arrays, a):
                    raise UserError(f"checkpoint {self.path} is damaged: its contents do not match the "
                                    f"SHA-256 digest stored when it was written")
                self.params = arrays["params"]
                self.optim = {name.split("/", 1)[1]: v for name, v in arrays.items() if name.startswith("optim/")}
                self.extra = {name.split("/", 1)[1]: v for name, v in arrays.items() if name.startswith("extra/")}
                self.step, self.optim_t = int(a["step"]), int(a["optim_t"])
                self.config_json, self.tokenizer_json = str(a["config_json"]), str(a["tokenizer_json"])
                self.layout = json.loads(a["layout_json"])
                self.rng_state = json.loads(a["rng_state_json"])
        except UserError:
            raise
        except (OSError, KeyError, ValueError, RuntimeError) as exc:
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
            stored, wanted = dict(theirs), dict(mine)
            diff = [f"{name}: checkpoint {stored[name]} vs model {shape}" if name in stored
                    else f"{name} {shape}: in the model, not in the checkpoint"
                    for name, shape in mine if stored.get(name) != shape]
            diff += [f"{name} {shape}: in the checkpoint, not in the model" for name, shape in theirs if name not in wanted]
            diff = diff[:3]
            raise UserError(f"checkpoint {self.path} does not match the model's parameters "
                            f"({len(self.layout)} tensors vs {len(mine)}; {'; '.join(diff) or 'different names'})")
