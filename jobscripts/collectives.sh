#!/usr/bin/env bash
# Reproduces results/collectives/ on one machine with plain mpiexec:
# check the cost model calibrated within the sweep, calibrate it at P=2 and P=4 (the file `auto`
# uses), sweep all-reduce sizes 4 B..64 MiB for every
# algorithm next to MPI's own (with --check), and measure comm/compute overlap.
# Usage: jobscripts/collectives.sh [ranks...]   (default: 2 4)
source "$(dirname "$0")/env.sh"
OUT=results/collectives
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1   # one core per rank; BLAS threads would oversubscribe
ALGS=ring,recursive_doubling,rabenseifner,tree,hierarchical,auto
[ $# -gt 0 ] || set -- 2 4
for P in "$@"; do
  # cost-model check: 3 x ring/recursive doubling at 64 KiB..64 MiB with the model calibrated in
  # the same sweep (--calibrate: calibration probes timed round-robin beside the algorithms)
  mkdir -p "$OUT/model-check"
  for k in 1 2 3; do
    mpiexec -n "$P" hpclm bench collectives --calibrate --sizes 4,1K,64K:64M --iters 10 \
      --algorithms ring,recursive_doubling \
      --txt "$OUT/model-check/samerun-n$P-run$k.txt" --json "$OUT/model-check/samerun-n$P-run$k.json" > /dev/null
  done
  mpiexec -n "$P" hpclm bench calibrate --iters 30 --out "$OUT/calibration-n$P.json" | tee "$OUT/calibration-n$P.txt"
  mpiexec -n "$P" hpclm bench collectives --check --sizes 4:64M --iters 10 --algorithms "$ALGS" \
    --calibration "$OUT/calibration-n$P.json" \
    --txt "$OUT/allreduce-n$P.txt" --json "$OUT/allreduce-n$P.json" --h5 "$OUT/allreduce-n$P.h5" \
    --plot "$OUT/allreduce-n$P.png" > /dev/null
  # overlap behind busy cores (matmuls), then behind an idle host (sleep, as while a GPU computes)
  mpiexec -n "$P" hpclm bench collectives --overlap --overlap-size 16M --iters 10 \
    --algorithms ring,recursive_doubling --txt "$OUT/overlap-n$P.txt" --json "$OUT/overlap-n$P.json" > /dev/null
  mpiexec -n "$P" hpclm bench collectives --overlap --overlap-compute sleep --overlap-size 16M --iters 10 \
    --algorithms ring,recursive_doubling --txt "$OUT/overlap-sleep-n$P.txt" --json "$OUT/overlap-sleep-n$P.json" > /dev/null
done
