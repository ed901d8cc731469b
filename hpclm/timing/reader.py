"""Read a timing record (layout: hpclm.timing.schema) into a RunRecord of NumPy arrays.

Works on a finished file, on one whose writer was killed (everything up to its last flush), and
on one still being written (opened as an SWMR reader). Rows are cut to the length of the
shortest dataset, so a step is present only if all its data is.
"""
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from hpclm.errors import UserError
from hpclm.timing import schema


@dataclass
class RunRecord:
    path: Path
    meta: dict          # file attributes; values of `*_json` keys parsed
    step: np.ndarray    # (S,) int64
    times: dict         # region -> (S, P) seconds
    per_rank: dict      # schema.RANK_FIELDS -> (S, P)
    per_step: dict      # schema.GLOBAL_FIELDS -> (S,)
    evals: dict         # schema.EVAL_FIELDS -> (E,)
    per_group: dict = field(default_factory=dict)   # group -> {schema.GROUP_FIELDS -> (S, P)}; {} for version 1
    memory: dict = field(default_factory=dict)      # schema.MEMORY_KINDS -> (S, P) bytes; {} for version 1

    @property
    def world_size(self):
        return int(self.meta["world_size"])

    @property
    def n_steps(self):
        return len(self.step)

    @property
    def name(self):
        return self.path.parent.name


def _open(path):
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise UserError(f"no timing record at {path}") from None
    except OSError:
        pass
    try:  # a file left open for writing (live or killed writer) opens only as an SWMR reader
        return h5py.File(path, "r", swmr=True)
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc})") from None


def _region_order(name):
    """Standard regions in schema order, then extras by name."""
    standard = schema.REGIONS.index(name) if name in schema.REGIONS else len(schema.REGIONS)
    return standard, name


def _read_group(group, names, length):
    return {name: group[name][:length] for name in names}


def read_run(path_or_run_dir):
    """The RunRecord of RUN_DIR/timing.h5 (or of the given .h5 file). Raises UserError when it is
    missing, unreadable, not an hpclm timing record, or of a newer schema version."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / schema.FILE_NAME
    if not os.path.exists(path):
        raise UserError(f"no timing record at {path}")
    with _open(path) as f:
        version = f.attrs.get("schema_version")
        if version is None or schema.STEP_PATH not in f:
            raise UserError(f"{path} is not an hpclm timing record (no schema_version or /step)")
        if int(version) > schema.SCHEMA_VERSION:
            raise UserError(f"{path} has timing schema version {int(version)}; "
                            f"this hpclm reads up to {schema.SCHEMA_VERSION}")
        try:
            meta = schema.decode_meta(f.attrs)
            regions = sorted(f[schema.TIME_GROUP], key=_region_order)
            rank_group, global_group, eval_group = f[schema.RANK_GROUP], f[schema.GLOBAL_GROUP], f[schema.EVAL_GROUP]
            v2 = list(schema.VERSION2_COLUMNS) if int(version) >= 2 else []
            step_sets = [f[schema.STEP_PATH]] + [f[schema.TIME_GROUP][r] for r in regions] \
                + [rank_group[n] for n in schema.RANK_FIELDS + tuple(v2)] \
                + [global_group[n] for n in schema.GLOBAL_FIELDS]
            n_steps = min(d.shape[0] for d in step_sets)
            n_evals = min(eval_group[n].shape[0] for n in schema.EVAL_FIELDS)
            return RunRecord(
                path=path, meta=meta, step=f[schema.STEP_PATH][:n_steps],
                times=_read_group(f[schema.TIME_GROUP], regions, n_steps),
                per_rank=_read_group(rank_group, schema.RANK_FIELDS, n_steps),
                per_step=_read_group(global_group, schema.GLOBAL_FIELDS, n_steps),
                evals=_read_group(eval_group, schema.EVAL_FIELDS, n_evals),
                per_group={g: {n: rank_group[schema.group_column(g, n)][:n_steps] for n in schema.GROUP_FIELDS}
                           for g in schema.GROUPS if v2},
                memory={k: rank_group[schema.memory_column(k)][:n_steps] for k in schema.MEMORY_KINDS if v2})
        except (KeyError, ValueError, OSError) as exc:
            raise UserError(f"{path} is a damaged hpclm timing record: {exc}") from None
