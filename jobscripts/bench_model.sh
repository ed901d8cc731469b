#!/usr/bin/env bash
# Reproduces results/bench_model.json: the issue's MFU configuration (n_layer 4, n_head 4, n_embd 256,
# block 128, batch 16, float32, 2 threads), plus the 1-thread run for comparison.
source "$(dirname "$0")/env.sh"
mkdir -p results/bench_model
hpclm bench model --threads 2 --steps 30 --json results/bench_model/threads2.json | tee results/bench_model/threads2.txt
hpclm bench model --threads 1 --steps 30 --json results/bench_model/threads1.json | tee results/bench_model/threads1.txt
