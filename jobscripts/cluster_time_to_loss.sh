#!/usr/bin/env bash
# Reproduces results/cluster/time_to_loss: the shakespeare_char recipe (0.81 M parameters) with a
# global batch of BATCH (4: one sequence per rank, so that at 100 Mbit/s the uncompressed all-reduce is
# most of a step), shortened to STEPS (400) steps, on HOSTS (4) emulated hosts x 1 rank at each link
# rate of RATES ("100mbit 1gbit"), once per
# method of METHODS (uncompressed ring, fp16, top-k 1 %, PowerSGD rank 4, 1-bit Adam; localH and
# dilocoH: local SGD and DiLoCo averaging every H steps, e.g. local16), then the
# table and loss-vs-wall-time figure (jobscripts/cluster_time_to_loss.py). Needs root.
#   STEPS=400 BATCH=4 RATES="100mbit 1gbit" METHODS="none fp16 topk powersgd onebit_adam" bash jobscripts/cluster_time_to_loss.sh
source "$(dirname "$0")/env.sh"
STEPS="${STEPS:-400}"; BATCH="${BATCH:-4}"; HOSTS="${HOSTS:-4}"; RATES="${RATES:-100mbit 1gbit}"
METHODS="${METHODS:-none fp16 topk powersgd onebit_adam}"
DATA="${DATA:-../shared/data/tinyshakespeare.txt}"
OUT="${OUT:-results/cluster/time_to_loss}"; RUNS="${RUNS:-runs/cluster_time_to_loss}"
WARMUP=$(( STEPS / 10 ))
mkdir -p "$OUT" "$RUNS"
trap 'hpclm cluster down --name ttl >/dev/null' EXIT
method_sets() {
  case "$1" in
    none) echo "--set compress.name=none" ;;
    fp16) echo "--set compress.name=fp16" ;;
    topk) echo "--set compress.name=topk --set compress.density=0.01" ;;
    powersgd) echo "--set compress.name=powersgd --set compress.powersgd_rank=4" ;;
    onebit_adam) echo "--set compress.name=ef_sign --set compress.onebit_adam=true --set compress.warmup_steps=$WARMUP --set optim.freeze_variance_step=$WARMUP" ;;
    local[0-9]*) echo "--set parallel.sync=local --set local.steps=${1#local}" ;;
    diloco[0-9]*) echo "--set parallel.sync=local --set local.steps=${1#diloco} --set local.outer=diloco" ;;
    *) echo "unknown method $1" >&2; exit 2 ;;
  esac
}
for rate in $RATES; do
  hpclm cluster up --name ttl --hosts "$HOSTS" --rate "$rate"
  for m in $METHODS; do
    run="$RUNS/$rate-$m"; rm -rf "$run"
    # shellcheck disable=SC2046
    hpclm cluster run --name ttl -- hpclm train --config jobscripts/configs/shakespeare_char.toml --data "$DATA" \
      --out "$run" --set train.max_steps="$STEPS" --set train.batch_size="$BATCH" --set optim.warmup_steps="$WARMUP" --set train.eval_interval=25 \
      --set train.eval_batches=10 --set train.log_interval=25 --set train.threads=1 --set comm.algorithm=ring \
      $(method_sets "$m") 2>&1 | tee "$OUT/$rate-$m.log"
    cp "$run/summary.json" "$OUT/$rate-${m}_summary.json"
  done
  hpclm cluster down --name ttl
done
python jobscripts/cluster_time_to_loss.py --runs "$RUNS" --out "$OUT"
