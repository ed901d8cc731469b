"""Rank 0's HDF5 writer of a timing record (layout: hpclm.timing.schema), in SWMR mode.

Every dataset and attribute is created up front, then the file switches to SWMR (single writer,
multiple readers): from then on it only grows by appending, each append ends with a flush, and
the file on disk stays consistent, so a run killed with SIGKILL keeps every flushed step and a
reader (even a live one, `swmr=True`) can read it. `/step` is appended last, so its length never
exceeds that of the data it indexes.
"""
import h5py
import numpy as np

from hpclm.timing import schema


def _appendable(f, path, width, dtype, chunk_rows):
    shape = (0,) if width is None else (0, width)
    fill = -1 if np.dtype(dtype).kind == "i" else np.nan
    return f.create_dataset(path, shape=shape, maxshape=(None,) + shape[1:], dtype=dtype,
                            chunks=(chunk_rows,) + shape[1:], fillvalue=fill, fletcher32=True)


def _append(dataset, rows):
    start = dataset.shape[0]
    dataset.resize(start + rows.shape[0], axis=0)
    dataset[start:] = rows


class TimingWriter:
    """Owns RUN_DIR/timing.h5 on rank 0: `append_steps` per flush, `append_eval` per evaluation."""

    def __init__(self, path, world_size, regions, meta, chunk_rows, metrics=(), eval_metrics=()):
        # Chunks of at most ~1 MiB however large the world: rows x P x 8 bytes.
        chunk_rows = max(1, min(chunk_rows, (1 << 20) // (8 * world_size)))
        self.columns = schema.rank_columns(regions, metrics)
        self.file = h5py.File(path, "w", libver="latest")
        f = self.file
        f.attrs.update(schema.encode_meta(meta))
        self.steps = _appendable(f, schema.STEP_PATH, None, "i8", chunk_rows)
        self.rank = [_appendable(f, schema.dataset_path(c), world_size, "f8", chunk_rows) for c in self.columns]
        self.globals = [_appendable(f, f"{schema.GLOBAL_GROUP}/{g}", None, "f8", chunk_rows)
                        for g in schema.GLOBAL_FIELDS]
        self.evals = [_appendable(f, f"{schema.EVAL_GROUP}/{e}", None, "i8" if e == "step" else "f8", 16)
                      for e in schema.EVAL_FIELDS + tuple(eval_metrics)]
        self.eval_metrics = tuple(eval_metrics)
        f.swmr_mode = True

    def append_steps(self, steps, rank_rows, global_rows):
        """Append n steps: `steps` (n,), `rank_rows` (P, n, n_columns), `global_rows` (n, n_global)."""
        for c, dataset in enumerate(self.rank):
            _append(dataset, rank_rows[:, :, c].T)
        for g, dataset in enumerate(self.globals):
            _append(dataset, global_rows[:, g])
        _append(self.steps, steps)
        self.file.flush()

    def append_eval(self, step, val_loss, train_loss, extra=None):
        extra = extra or {}
        values = (step, val_loss, train_loss) + tuple(extra.get(n, np.nan) for n in self.eval_metrics)
        for dataset, value in zip(self.evals, values):
            _append(dataset, np.asarray([value], dtype=dataset.dtype))
        self.file.flush()

    def close(self):
        self.file.close()
