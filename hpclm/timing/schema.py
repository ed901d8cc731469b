"""The timing record's schema: every name the writer writes and the reader reads lives here.

Layout of one run (``RUN_DIR/timing.h5``, written by rank 0 only, HDF5 SWMR so that a killed run
stays readable up to its last flush; S = logged steps, P = world size, E = evaluations)::

    /step                  (S,)    int64    optimizer step of each row
    /rank/time/<region>    (S, P)  float64  seconds rank p spent in <region> during that step
    /rank/<field>          (S, P)  float64  step_time, bytes_sent, bytes_recv, bytes_uncompressed,
                                            loss (the rank's local loss), tokens
    /rank/group/<g>/<f>    (S, P)  float64  bytes_sent, bytes_recv of communicator group g (world,
                                            dp, tp, pp, node, ps (version >= 3: parameter-server
                                            traffic), other; hpclm.comm.counters); they add up to
                                            /rank/bytes_sent and /rank/bytes_recv (version >= 2)
    /rank/memory/<kind>    (S, P)  float64  bytes the rank held in params, grads, optimizer,
                                            activations (peak of the step), from its arrays (>= 2)
    /global/<field>        (S,)    float64  lr, grad_norm, loss (global mean),
                                            elapsed (seconds since the recorder started, rank 0)
    /rank/metric/<name>    (S, P)  float64  optional per-rank measurements a strategy declares, NaN on
                                            steps without one (gossip: consensus = ||x_i - x̄||^2;
                                            ps: staleness, pushes of the step)
    /eval/<field>          (E,)             step (int64), val_loss, train_loss (float64), and optional
                                            evaluation metrics a strategy declares (val_loss_min, ...)
    attributes of /                         schema_version (int), world_size (int),
                                            start_time (ISO 8601), config_json, git_commit,
                                            versions_json, hostnames_json (one per rank),
                                            node_local_rank_json (one per rank), layout_json,
                                            calibration_json (optional), any extra key: str, number
                                            or JSON text (keys ending in ``_json``)

Every dataset is chunked along S with maxshape (None, ...), so it grows by appending; float
fill value NaN (int fill -1), so a row that was never written reads as missing, not as zero.

Regions. The standard regions are disjoint slices of one step on the training thread, so their
sum is at most step_time (the rest is "other"):
forward, backward, optimizer, data, eval, checkpoint, compress, decompress, and the *exposed*
communication: ``comm`` (inside blocking calls, or posting non-blocking ones), ``comm_wait``
(waiting for non-blocking ones to finish) and ``pp_wait`` (a pipeline stage waiting for its
neighbour's activation or gradient: the bubble). ``comm_async`` is the exception: the time non-blocking
communication was in flight, measured off the training thread (from post to completion, e.g. by a
progress thread); the part of it not spent in ``comm_wait`` was hidden behind computation.
A run may add extra regions by name (lower-case letters, digits, underscores).
"""
import json
import re
from pathlib import Path

SCHEMA_VERSION = 3                # 2: per-group bytes (/rank/group/...); 3: the "ps" group; older records still read
FILE_NAME = "timing.h5"
TRACE_FILE_NAME = "trace.json"
SEGMENT_NAME = re.compile(r"^timing-from-(\d+)\.h5$")   # a resumed run's record from step N on

COMPUTE_REGIONS = ("forward", "backward", "optimizer", "compress", "decompress")
EXPOSED_COMM_REGIONS = ("comm", "comm_wait", "pp_wait")
BACKGROUND_COMM_REGION = "comm_async"
OTHER_REGIONS = ("data", "eval", "checkpoint")
REGIONS = COMPUTE_REGIONS + EXPOSED_COMM_REGIONS + OTHER_REGIONS + (BACKGROUND_COMM_REGION,)

RANK_FIELDS = ("step_time", "bytes_sent", "bytes_recv", "bytes_uncompressed", "loss", "tokens")
GROUPS = ("world", "dp", "tp", "pp", "node", "ps", "other")
GROUP_FIELDS = ("bytes_sent", "bytes_recv")
MEMORY_KINDS = ("params", "grads", "optimizer", "activations")
GLOBAL_FIELDS = ("lr", "grad_norm", "loss", "elapsed")
EVAL_FIELDS = ("step", "val_loss", "train_loss")

STEP_PATH = "/step"
TIME_GROUP = "/rank/time"
RANK_GROUP = "/rank"
GLOBAL_GROUP = "/global"
EVAL_GROUP = "/eval"

META_REQUIRED = ("schema_version", "world_size", "start_time", "hostnames_json", "node_local_rank_json")
META_PROVENANCE = ("config_json", "git_commit", "versions_json", "layout_json", "calibration_json")
JSON_SUFFIX = "_json"

_REGION_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def region_columns(extra_regions=()):
    """The region columns of a record: the standard regions, then the extras in the given order."""
    columns = list(REGIONS)
    for name in extra_regions:
        if not _REGION_NAME.match(name):
            raise ValueError(f"region name {name!r} must be lower-case letters, digits and underscores")
        if name not in columns:
            columns.append(name)
    return tuple(columns)


def group_column(group, field):
    """The per-rank column of one group's bytes ("group/dp/bytes_sent")."""
    return f"group/{group}/{field}"


def rank_columns(regions, metrics=()):
    """Column names of one rank's per-step row: ("time/<region>", ...), RANK_FIELDS, the
    per-group byte and the memory columns, then the optional metric columns."""
    return tuple(f"time/{r}" for r in regions) + RANK_FIELDS + VERSION2_COLUMNS + tuple(map(metric_column, metrics))


def metric_column(name):
    return f"{METRIC_PREFIX}{name}"


METRIC_PREFIX = "metric/"
METRIC_GROUP = "/rank/metric"


def memory_column(kind):
    return f"memory/{kind}"


def groups_of(version):
    """The byte groups a record of schema `version` holds (none before 2, no "ps" before 3)."""
    return GROUPS if version >= 3 else tuple(g for g in GROUPS if g != "ps") if version >= 2 else ()


def version2_columns(version=SCHEMA_VERSION):
    """The per-group byte and memory columns of a record of schema `version` (>= 2)."""
    return tuple(group_column(g, f) for g in groups_of(version) for f in GROUP_FIELDS) + \
        tuple(memory_column(k) for k in MEMORY_KINDS)


VERSION2_COLUMNS = version2_columns()


def dataset_path(column):
    """HDF5 path of a per-rank column ("time/forward" -> "/rank/time/forward")."""
    return f"{RANK_GROUP}/{column}"


def encode_meta(meta):
    """Attribute values for run metadata: str and numbers as they are; `*_json` keys hold JSON text
    (a non-string value is dumped); anything else is rejected."""
    attrs = {}
    for key, value in meta.items():
        if key.endswith(JSON_SUFFIX) and not isinstance(value, str):
            value = json.dumps(value, sort_keys=True)
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"run metadata {key!r}: store {type(value).__name__} as JSON under a key ending in {JSON_SUFFIX!r}")
        attrs[key] = value
    return attrs


def decode_meta(attrs):
    """Run metadata from the file's attributes: `*_json` values parsed (key kept), numbers as Python numbers."""
    meta = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if key.endswith(JSON_SUFFIX):
            value = json.loads(value)
        elif hasattr(value, "item"):
            value = value.item()
        meta[key] = value
    return meta


def segment_file_name(start_step):
    """The record of a run (segment) starting at `start_step`: timing.h5, or timing-from-N.h5 after a resume."""
    return f"timing-from-{int(start_step)}.h5" if start_step else FILE_NAME


def segment_files(run_dir):
    """[(start step, path)] of every timing record in `run_dir`, in step order: timing.h5 (step 0)
    first, then each resumed segment's timing-from-N.h5 by N."""
    found = []
    for path in Path(run_dir).iterdir():
        match = SEGMENT_NAME.match(path.name)
        if path.name == FILE_NAME or match:
            found.append((int(match.group(1)) if match else 0, path))
    return sorted(found)
