# Sourced by results/decentralized/{local,gossip}/run.sh: run_all NAMES runs each configuration of the
# associative array `runs` (name -> extra flags) as $NP ranks of `hpclm train $common` into $R/<name>,
# $JOBS at a time, then copies logs and summaries to $OUT and writes $OUT/analyze.txt.
run_all() {
  local names="$1" running=0 name
  for name in $names; do
    # shellcheck disable=SC2086
    mpiexec -n "$NP" hpclm train $common --out "$R/$name" ${runs[$name]} > "$R/$name.log" 2>&1 &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then wait; running=0; fi
  done
  wait
  for name in $names; do cp "$R/$name.log" "$OUT/$name.log"; cp "$R/$name/summary.json" "$OUT/${name}_summary.json"; done
  # shellcheck disable=SC2046
  hpclm analyze $(for n in $names; do echo "$R/$n"; done) --skip-steps 5 > "$OUT/analyze.txt" 2>&1
}
