#!/usr/bin/env bash
# Do this session's compressor kernels leave training unchanged? The char recipe on 4 ranks for 200
# steps with each changed compressor, once from a checkout of BASE (a git worktree at WORKTREE) and
# once from this tree, on the same machine; prints whether the logged losses agree and whether the final
# checkpoints (parameters, optimizer state, error-feedback residuals) are identical bit for bit. KERNELS=numpy|numba
# pins train.kernels on both sides. Run from the repository root:
#   git worktree add /tmp/base 13d827f && WORKTREE=/tmp/base bash results/compression_kernels/same_trajectory.sh
set -u
source jobscripts/env.sh
WORKTREE=${WORKTREE:?a checkout of the commit to compare with}
OUT=${OUT:-/tmp/same_trajectory}
mkdir -p "$OUT"
for name in ${COMPRESSORS:-fp16 topk threshold terngrad kmeans randomk}; do
  for side in base this; do
    root=$PWD; [ $side = base ] && root=$WORKTREE
    (cd "$root" && PYTHONPATH="$root" mpiexec -n 4 python -m hpclm.cli train --config jobscripts/configs/shakespeare_char.toml \
      --data "$OLDPWD/../shared/data/tinyshakespeare.txt" --set compress.name=$name --set train.max_steps=200 \
      --set train.eval_interval=100 --set train.log_interval=10 ${KERNELS:+--set train.kernels=$KERNELS} --out "$OUT/${name}_$side" --overwrite) \
      > "$OUT/${name}_$side.log" 2>&1
  done
  same=$(python - "$OUT/${name}_base" "$OUT/${name}_this" <<'PY'
import sys, h5py, numpy as np
a, b = (h5py.File(f"{d}/ckpt.h5", "r") for d in sys.argv[1:])
names = []
a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) else None)
print("yes" if all(np.array_equal(a[n][()], b[n][()]) for n in names) else "no", len(names))
PY
)
  logs=no; diff -q <(grep '^step' "$OUT/${name}_base.log" | sed 's/[0-9,]* tok\/s//') \
    <(grep '^step' "$OUT/${name}_this.log" | sed 's/[0-9,]* tok\/s//') > /dev/null && logs=yes
  val=$(python -c "import json; print(repr(json.load(open('$OUT/${name}_this/summary.json'))['val_loss']))")
  echo "$name: logged losses identical $logs; final params, optimizer state, residuals identical (datasets) $same; val $val"
done
