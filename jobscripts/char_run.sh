# Sourced by the compression jobscripts (after env.sh, with NP and DATA set):
#   char_run RUN LOGDIR [--set key=value ...]
# trains the shakespeare_char recipe on $NP ranks into the run directory RUN with the extra options,
# writes its console log to LOGDIR/<name>.log and copies its summary to LOGDIR/<name>_summary.json
# (name = basename of RUN).
char_run() {
  local run="$1" logdir="$2" name
  shift 2
  name="$(basename "$run")"
  mpiexec -n "$NP" hpclm train --config jobscripts/configs/shakespeare_char.toml --data "$DATA" "$@" \
    --out "$run" --overwrite | tee "$logdir/$name.log"
  cp "$run/summary.json" "$logdir/${name}_summary.json"
}
