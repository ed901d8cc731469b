"""Read a timing record (layout: hpclm.timing.schema) into a RunRecord of NumPy arrays.

A run directory's record is every segment of the run in step order: timing.h5, then the
timing-from-N.h5 of each resume (schema.segment_files), merged into one RunRecord; where a
later segment starts at a step an earlier one already recorded (resumed from an older
checkpoint), the later segment's rows replace those. Works on a finished file, on one whose writer was killed (everything up to its last flush), and
on one still being written (opened as an SWMR reader). Rows are cut to the length of the
shortest dataset, so a step is present only if all its data is.

A damaged file fails at once with a UserError instead of hanging: a truncated one (shorter than
the end of file its superblock records, e.g. a copy cut short) is refused before HDF5 sees it,
and the SWMR reader makes one read attempt per metadata block (HDF5's default for SWMR is to
retry a failing checksum for hours, since a live writer may be mid-write).
"""
import ctypes
import os
import struct
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
    evals: dict         # schema.EVAL_FIELDS and any optional evaluation metric -> (E,)
    per_group: dict = field(default_factory=dict)   # group -> {schema.GROUP_FIELDS -> (S, P)}; {} for version 1
    memory: dict = field(default_factory=dict)      # schema.MEMORY_KINDS -> (S, P) bytes; {} for version 1
    metrics: dict = field(default_factory=dict)     # optional per-rank metric (gossip: consensus) -> (S, P), NaN = not measured
    segments: tuple = ()  # ((start step, path, rows), ...) of the files merged into this record

    @property
    def world_size(self):
        return int(self.meta["world_size"])

    @property
    def n_steps(self):
        return len(self.step)

    @property
    def name(self):
        return self.path.parent.name


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_not_truncated(path):
    """Refuse a file shorter than the end-of-file address in its (version 2/3) superblock."""
    with open(path, "rb") as fh:
        head = fh.read(64)
        size = os.fstat(fh.fileno()).st_size
    if not head.startswith(HDF5_SIGNATURE):
        raise UserError(f"{path} is not a readable HDF5 file (no HDF5 signature)")
    version, offset_size = head[8], head[9]
    if version not in (2, 3) or offset_size not in (4, 8):
        return                                       # an older superblock layout: HDF5 checks it
    fmt = "<3I" if offset_size == 4 else "<3Q"       # base address, extension address, end of file
    need = 12 + 3 * offset_size
    if len(head) < need:
        raise UserError(f"{path} is truncated: {size} bytes, shorter than its HDF5 superblock")
    base, _, end_of_file = struct.unpack(fmt, head[12:need])
    if size < base + end_of_file:
        raise UserError(f"{path} is truncated: {size:,} of {base + end_of_file:,} bytes (a partial copy?); "
                        f"it cannot be read")


def _hdf5_library():
    """The HDF5 library h5py is running on (ctypes), or None where it cannot be found."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libhdf5" in line and "libhdf5_hl" not in line}
        lib = ctypes.CDLL(paths.pop())
        lib.H5Pset_metadata_read_attempts.argtypes = (ctypes.c_int64, ctypes.c_uint)
        return lib
    except (OSError, KeyError, AttributeError):
        return None


def _open_swmr(path):
    """An SWMR reader making one attempt per metadata read (a checksum error fails at once)."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    lib = _hdf5_library()
    if lib is not None:
        lib.H5Pset_metadata_read_attempts(fapl.id, 1)
    return h5py.File(h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl))


def _open(path):
    _check_not_truncated(path)
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise UserError(f"no timing record at {path}") from None
    except OSError:
        pass
    try:  # a file left open for writing (live or killed writer) opens only as an SWMR reader
        return _open_swmr(path)
    except OSError as exc:
        raise UserError(f"{path} is not a readable HDF5 file ({exc})") from None


def _region_order(name):
    """Standard regions in schema order, then extras by name."""
    standard = schema.REGIONS.index(name) if name in schema.REGIONS else len(schema.REGIONS)
    return standard, name


def _read_group(group, names, length):
    return {name: group[name][:length] for name in names}


def read_run(path_or_run_dir):
    """The RunRecord of RUN_DIR (all its segments, merged) or of the given .h5 file. Raises
    UserError when it is missing, unreadable, damaged, not an hpclm timing record, or of a newer
    schema version."""
    path = Path(path_or_run_dir)
    if not path.is_dir():
        return _read_file(path)
    found = schema.segment_files(path)
    if not found:
        raise UserError(f"no timing record at {path / schema.FILE_NAME}")
    records = [_read_file(p) for _, p in found]
    return records[0] if len(records) == 1 else merge_segments(records, [start for start, _ in found])


def merge_segments(records, starts):
    """One RunRecord of a run's segments (in step order, segment i starting at starts[i]); rows of
    a segment at or after the next segment's start are replaced by that segment's."""
    sizes = sorted({r.world_size for r in records})
    if len(sizes) > 1:
        raise UserError(f"{records[0].path.parent}: the run's segments ran on different world sizes "
                        f"({', '.join(map(str, sizes))}); analyze each file on its own: "
                        + " ".join(str(r.path) for r in records))
    ends = list(starts[1:]) + [None]
    keep = [r.step < end if end is not None else np.ones(r.n_steps, bool) for r, end in zip(records, ends)]
    keep_eval = [r.evals["step"] < end if end is not None else np.ones(len(r.evals["step"]), bool)
                 for r, end in zip(records, ends)]
    regions = sorted({name for r in records for name in r.times}, key=_region_order)

    def joined(get, masks):
        return np.concatenate([get(r)[m] for r, m in zip(records, masks)])

    times = {name: joined(lambda r: r.times.get(name, np.zeros_like(r.per_rank["step_time"])), keep)
             for name in regions}
    return RunRecord(
        path=records[0].path, meta=records[0].meta, step=joined(lambda r: r.step, keep), times=times,
        per_rank={n: joined(lambda r: r.per_rank[n], keep) for n in schema.RANK_FIELDS},
        per_step={n: joined(lambda r: r.per_step[n], keep) for n in schema.GLOBAL_FIELDS},
        evals={n: joined(lambda r: r.evals[n], keep_eval) for n in records[0].evals if all(n in r.evals for r in records)},
        metrics={n: joined(lambda r: r.metrics[n], keep) for n in records[0].metrics
                 if all(n in r.metrics for r in records)},
        per_group={g: {n: joined(lambda r: r.per_group[g][n], keep) for n in schema.GROUP_FIELDS}
                   for g in schema.GROUPS if all(g in r.per_group for r in records)},
        memory={k: joined(lambda r: r.memory[k], keep) for k in schema.MEMORY_KINDS if all(r.memory for r in records)},
        segments=tuple((start, r.path, int(m.sum())) for start, r, m in zip(starts, records, keep)))


def _read_file(path):
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
            v2 = list(schema.version2_columns(int(version))) if int(version) >= 2 else []
            step_sets = [f[schema.STEP_PATH]] + [f[schema.TIME_GROUP][r] for r in regions] \
                + [rank_group[n] for n in schema.RANK_FIELDS + tuple(v2)] \
                + [global_group[n] for n in schema.GLOBAL_FIELDS]
            n_steps = min(d.shape[0] for d in step_sets)
            eval_names = schema.EVAL_FIELDS + tuple(sorted(set(eval_group) - set(schema.EVAL_FIELDS)))
            n_evals = min(eval_group[n].shape[0] for n in eval_names)
            metric_group = f[schema.METRIC_GROUP] if schema.METRIC_GROUP in f else {}
            return RunRecord(
                path=path, meta=meta, step=f[schema.STEP_PATH][:n_steps],
                times=_read_group(f[schema.TIME_GROUP], regions, n_steps),
                per_rank=_read_group(rank_group, schema.RANK_FIELDS, n_steps),
                per_step=_read_group(global_group, schema.GLOBAL_FIELDS, n_steps),
                evals=_read_group(eval_group, eval_names, n_evals),
                metrics={n: metric_group[n][:n_steps] for n in metric_group},
                per_group={g: {n: rank_group[schema.group_column(g, n)][:n_steps] for n in schema.GROUP_FIELDS}
                           for g in schema.groups_of(int(version))},
                memory={k: rank_group[schema.memory_column(k)][:n_steps] for k in schema.MEMORY_KINDS if v2})
        except (KeyError, ValueError, OSError) as exc:
            raise UserError(f"{path} is a damaged hpclm timing record: {exc}") from None
