"""The run directory (`--out`): claimed by a new run only when it holds no other run, unless
`--overwrite` says to replace that run; created and checked for writing before any work; and
the summary of a run resumed in segments.

A directory holds a run when it has a checkpoint, a timing record (any segment) or a summary.
Rank 0 alone touches the file system here; callers make the result collective.
"""
import json
import math
import os
import tempfile
from pathlib import Path

from hpclm import checkpoint as ckpt_io
from hpclm.errors import UserError
from hpclm.timing import schema

CHECKPOINT = ckpt_io.FILE_NAME
SUMMARY = "summary.json"


def run_files(run_dir):
    """The files of a run in `run_dir` (names, sorted); [] when it holds none or does not exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = {p.name for _, p in schema.segment_files(run_dir)}
    names |= {n for n in (CHECKPOINT, SUMMARY, schema.TRACE_FILE_NAME) if (run_dir / n).exists()}
    return sorted(names)


def claim(out_dir, *, resume_dir=None, overwrite=False):
    """Make `out_dir` this run's directory. A directory holding another run is refused (UserError
    saying how to continue or replace it) unless `overwrite`, which deletes that run's files;
    resuming into the directory of the checkpoint continues its run. Then the directory is created
    and a file written and removed in it, so that an unusable --out fails now, in one line."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"run directory {out} is an existing file, not a directory; choose another --out")
    continuing = resume_dir is not None and out.exists() and os.path.samefile(out, resume_dir)
    existing = [] if continuing else run_files(out)
    if existing and not overwrite:
        raise UserError(f"{out} already holds a run ({', '.join(existing)}); continue it with --resume {out}, "
                        f"replace it with --overwrite, or choose another --out")
    for name in existing:
        (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise UserError(f"cannot use {out} as the run directory: {exc.strerror or exc}") from None


def write_summary(run_dir, summary):
    """RUN_DIR/summary.json, strict JSON (non-finite numbers become null). `summary` describes the
    segment just run (from start_step to end_step); "segments" lists it after every earlier
    segment of the run that the previous summary.json recorded, so a resumed run's summary covers
    all of it. A segment that an earlier one overlaps (resumed from an older checkpoint) replaces it."""
    path = Path(run_dir) / SUMMARY
    earlier = []
    if summary["start_step"] > 0 and path.exists():
        try:
            previous = json.loads(path.read_text())
            earlier = previous.get("segments") or [_segment(previous)]
        except (OSError, ValueError, KeyError, TypeError):
            earlier = []                                  # unreadable: this segment's summary still stands
    segments = [s for s in earlier if s["end_step"] <= summary["start_step"]] + [_segment(summary)]
    record = dict(summary, segments=segments)
    with open(path, "w") as fh:
        json.dump(_finite_or_null(record), fh, indent=1, allow_nan=False)


SEGMENT_KEYS = ("start_step", "end_step", "world_size", "wall_seconds", "tokens_per_second", "val_loss")


def _segment(summary):
    return {key: summary[key] for key in SEGMENT_KEYS}


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(v) for v in value]
    return value
