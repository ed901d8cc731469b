"""Summary of results/decentralized/ps/run.sh's runs: final validation losses and wall times;
bytes per step at the server (its ps-server-0.json) against a worker's (timing.h5, steps 1..)
for W = 1, 2, 3 with G = the gradient's bytes; the server's time split and staleness histograms.

    python results/decentralized/ps/summarize.py RUNS_DIR
"""
import json
import sys
from pathlib import Path

import numpy as np

from hpclm.timing.reader import read_run


def server_report(run):
    return json.loads((run / "ps-server-0.json").read_text())


def main(runs):
    runs = Path(runs)
    print("run            val_loss  wall_s   (char recipe, P = 4, S = 1 / all-reduce over the same W = 3)")
    for name in ("allreduce_w3", "ps_sync", "ps_async", "ps_ssp2"):
        s = json.loads((runs / name / "summary.json").read_text())
        s = s.get("segments", [s])[-1] if "segments" in s else s
        print(f"{name:14s} {s['val_loss']:.4f}   {s['wall_seconds']:.0f}")
    print()
    print("W  G_bytes   server sent+recv / step   / (W G)   worker 0 sent+recv / step   / G")
    for W in (1, 2, 3):
        run = runs / f"bytes_w{W}"
        rep = server_report(run)
        rec = read_run(run)
        steps = rec.n_steps
        lo, hi = rep["shard"]
        G = 4 * (hi - lo)                                   # float32 gradient of the whole model (S = 1)
        server = (rep["bytes_sent"] + rep["bytes_recv"]) / steps
        worker = float(np.mean(rec.per_rank["bytes_sent"][:, 0] + rec.per_rank["bytes_recv"][:, 0]))
        print(f"{W}  {G:8d}  {server:14.0f}            {server / (W * G):.4f}    {worker:14.0f}             "
              f"{worker / G:.4f}")
    print()
    for name in ("ps_sync", "ps_async", "ps_ssp2"):
        rep = server_report(runs / name)
        sec = rep["seconds"]
        total = sum(sec.values())
        split = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in sec.items())
        print(f"{name}: pushes applied {rep['pushes_applied']}, updates {rep['updates']}; server time: {split}")
        print(f"  staleness histogram (staleness: pushes): {rep['staleness_histogram']}")


if __name__ == "__main__":
    main(sys.argv[1])
