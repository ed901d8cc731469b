"""Cost-model check over runs of `bench collectives --calibrate` (jobscripts/cluster_collectives.sh).

    python jobscripts/cluster_model_check.py results/cluster/collectives/model-check/samerun-4x1-run*.json

Per run: how many ring / recursive-doubling times at >= 64 KiB the model (fitted in the same sweep)
predicts within 25 %; across runs: the spread (max/min) of each size's median time, and the
busbw at the largest size.
"""
import json
import sys
from collections import defaultdict

ALGS = ("ring", "recursive_doubling")
MIN_BYTES = 64 * 1024


def main(paths):
    medians = defaultdict(list)
    for path in paths:
        rows = [r for r in json.load(open(path))["rows"] if r["algorithm"] in ALGS and r["bytes"] >= MIN_BYTES]
        ok = [r for r in rows if abs(r["model_err"]) <= 0.25]
        worst = max(rows, key=lambda r: abs(r["model_err"]))
        print(f"{path}: {len(ok)} of {len(rows)} within 25 % (worst {worst['algorithm']} {worst['size']}: "
              f"{100 * worst['model_err']:+.0f} %)")
        for r in rows:
            medians[r["algorithm"], r["bytes"]].append((r["median_us"], r["busbw_GBps"], r["size"]))
    spreads = {key: max(m for m, _, _ in v) / min(m for m, _, _ in v) for key, v in medians.items()}
    for alg in ALGS:
        keys = sorted(k for k in spreads if k[0] == alg)
        print(f"{alg}: run-to-run spread of the median (max/min over {len(paths)} runs) "
              + ", ".join(f"{medians[k][0][2]} {spreads[k]:.2f}x" for k in keys))
        big = keys[-1]
        print(f"{alg}: busbw at {medians[big][0][2]}: " + ", ".join(f"{b * 8:.3f} Gbit/s" for _, b, _ in medians[big]))


if __name__ == "__main__":
    main(sys.argv[1:])
