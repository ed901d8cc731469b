"""table.txt of results/decentralized/p8/run.sh: for each strategy at P = 4 and P = 8 the final
validation loss and the bytes sent + received per step by a rank on average and by the busiest
rank (timing.h5 after 5 warm-up steps; a parameter server from its ps-server-0.json, spread over
the run's steps), in units of G = the model's bytes.

    python results/decentralized/p8/table.py RUNS_DIR NAME...
"""
import json
import sys
from pathlib import Path

from hpclm.timing.reader import read_run

runs, names = Path(sys.argv[1]), sys.argv[2:]
print(f"{'run':<11}{'P':>3}{'val loss':>10}{'per rank / step':>17}{'busiest / step':>16}  busiest")
for name in names:
    for P in (4, 8):
        run_dir = runs / f"p{P}_{name}"
        rec = read_run(run_dir)
        G = rec.memory["params"].max()                                        # bytes of one model
        moved = (rec.per_rank["bytes_sent"] + rec.per_rank["bytes_recv"])[5:]  # (steps, ranks)
        per_rank = moved.mean(axis=0)                                          # (ranks,) per step
        busiest, who = per_rank.max(), f"rank {per_rank.argmax()}"
        servers = sorted(run_dir.glob("ps-server-*.json"))
        if servers:
            report = json.loads(servers[0].read_text())
            server = (report["bytes_sent"] + report["bytes_recv"]) / report["updates"]
            if server > busiest:
                busiest, who = server, "server 0"
        print(f"{name:<11}{P:>3}{rec.evals['val_loss'][-1]:>10.4f}{per_rank.mean() / G:>15.3f} G"
              f"{busiest / G:>14.3f} G  {who}")
