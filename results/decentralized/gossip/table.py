"""table.txt of the gossip runs: final validation loss (x̄ and the ranks' spread), last consensus
distance, measured dp bytes sent per rank per step next to degree x G and the ring all-reduce's
2(P-1)/P x G (G = the model's bytes).  usage: table.py RUNS_DIR NAME..."""
import sys
from pathlib import Path

import numpy as np

from hpclm.parallel.topology import build_topology
from hpclm.timing.reader import read_run

runs, names = Path(sys.argv[1]), sys.argv[2:]
print(f"{'run':<13}{'val(x̄)':>9}{'val min..max':>16}{'consensus':>11}{'sent/rank/step':>16}"
      f"{'degree*G':>11}{'ring AR 2(P-1)/P*G':>20}")
for name in names:
    rec = read_run(runs / name)
    cfg, P = rec.meta["config_json"], rec.world_size
    sent = rec.per_group["dp"]["bytes_sent"][5:].mean()       # over steps (after 5 warm-up) and ranks
    degree = build_topology(cfg["gossip"]["topology"], P).degree()
    model_bytes = rec.memory["params"].max()                  # G
    consensus = rec.metrics["consensus"]
    measured = np.isfinite(consensus).all(axis=1)
    print(f"{name:<13}{rec.evals['val_loss'][-1]:>9.4f}{rec.evals['val_loss_min'][-1]:>8.4f}.."
          f"{rec.evals['val_loss_max'][-1]:<6.4f}{consensus[measured][-1].mean():>11.2e}"
          f"{sent / 2**20:>13.3f} MiB{degree * model_bytes / 2**20:>7.3f} MiB"
          f"{2 * (P - 1) / P * model_bytes / 2**20:>15.3f} MiB")
