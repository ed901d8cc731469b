"""The before/after table of README.md from ab-{before,after}-{1,2,3}.json (rounds interleaved), in
this folder or in the folder given (`python ab_table.py ../avx512`)."""
import json
import statistics
import sys
from pathlib import Path

FOLDER = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent


def rows(kind, i):
    return {r["compressor"]: r for r in json.loads((FOLDER / f"ab-{kind}-{i}.json").read_text())["rows"]}


before, after = ([rows(kind, i) for i in (1, 2, 3)] for kind in ("before", "after"))
print("| compressor | compress + decompress ms, before | after | after / before | ratio of memcpy, before | after | target |")
print("|---|---|---|---|---|---|---|")
for name in before[0]:
    if name in ("none", "memcpy"):
        continue
    t = [statistics.median(r[name]["t_compress_ms"] + r[name]["t_decompress_ms"] for r in runs) for runs in (before, after)]
    q = [statistics.median(r[name]["ratio_memcpy"] for r in runs) for runs in (before, after)]
    target = 0.8 if name in ("fp16", "bf16", "int8", "signsgd", "ef_sign") else 0.5
    print(f"| {name} | {t[0]:.1f} | {t[1]:.1f} | {t[1] / t[0]:.2f} | {q[0]:.2f} | {q[1]:.2f} | {target} |")
memcpy = [statistics.median(r["memcpy"]["gbps"] for r in runs) for runs in (before, after)]
print(f"\nmemcpy GB/s (median of the 3 rounds): before {memcpy[0]:.2f}, after {memcpy[1]:.2f}")
