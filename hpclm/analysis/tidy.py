"""A tidy CSV of timing records: one row per (run, rank, region) with statistics over steps."""
import csv

import numpy as np

COLUMNS = ("run", "world_size", "rank", "region", "median_s", "mean_s", "min_s", "max_s", "steps")


def rows(name, record, skip_steps):
    """Rows of one run; "step_time" appears as a region next to the recorded ones."""
    series = dict(record.times, step_time=record.per_rank["step_time"])
    for region, values in series.items():
        values = values[skip_steps:]
        for rank in range(record.world_size):
            v = values[:, rank]
            yield (name, record.world_size, rank, region, float(np.median(v)), float(v.mean()),
                   float(v.min()), float(v.max()), len(v))


def write_csv(path, records, names, skip_steps):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for name, record in zip(names, records):
            writer.writerows(rows(name, record, skip_steps))
