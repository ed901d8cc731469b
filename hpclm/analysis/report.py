"""`hpclm analyze RUN_DIR [RUN_DIR ...]`: print where each run's time and bytes went, compare runs.

Reads RUN_DIR's timing record through hpclm.timing.reader: timing.h5 and, for a resumed run,
every timing-from-N.h5 segment, in step order; definitions of every number are in
hpclm.analysis.metrics. `--plots DIR` writes PNG figures (a pipeline run with a trace: its timeline, hpclm.analysis.pipeline),
`--csv PATH` a tidy per-rank table. A run with parameter servers also shows each server's report
(hpclm.analysis.servers).
"""
from pathlib import Path

import numpy as np

from hpclm.analysis import metrics, pipeline
from hpclm.analysis.servers import format_servers, read_servers, staleness_lines
from hpclm.errors import UserError
from hpclm.timing.reader import read_run

DEFINITIONS = """\
notes: exposed communication = comm + comm_wait, the time the training thread was blocked in
  communication calls or waiting for non-blocking ones (not overlapped with anything);
  hidden communication = comm_async - comm_wait, the time non-blocking communication was in flight
  (measured off the training thread) while the rank computed; fractions are of the summed step time;
  tokens/s = all ranks' tokens / sum over steps of the slowest rank's step time;
  a region marked [Nx] ran in only N of the counted steps: its times are per occurrence."""


def add_arguments(parser):
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory (or its timing.h5)")
    parser.add_argument("--plots", metavar="DIR", help="write PNG figures into DIR")
    parser.add_argument("--csv", metavar="PATH", help="write a tidy per-rank, per-region table")
    parser.add_argument("--skip-steps", type=int, default=1, metavar="N",
                        help="leave out the first N logged steps as warm-up (default 1)")


def ms(seconds):
    return f"{seconds * 1e3:9.3f}"


def megabytes(n_bytes):
    return f"{n_bytes / 1e6:.3f} MB"


def format_run(summary, record):
    s = summary
    lines = [f"== {s.name}: {s.world_size} ranks, {s.steps} steps counted ({s.skipped} warm-up skipped)"
             f", git {record.meta.get('git_commit', '?')}  [{record.path}]",
             f"  {'region (ms/step)':<18}{'min':>9} {'median':>9} {'max':>9}   (each rank's median over steps, across ranks)"]
    if len(record.segments) > 1:
        lines.insert(1, "  segments: " + ", ".join(f"{path.name} ({rows} steps from step {start})"
                                                   for start, path, rows in record.segments))
    for name, spread in list(s.regions.items()) + [("step_time", s.step_time)]:
        label = f"{name} [{s.region_steps[name]}x]" if name in s.region_steps else name
        lines.append(f"  {label:<18}{ms(spread.min)} {ms(spread.median)} {ms(spread.max)}")
    lines.append(f"  step time: compute {s.compute_fraction:6.1%} | exposed communication {s.comm_fraction:6.1%}"
                 f" | other {s.other_fraction:6.1%}")
    hidden = ("not recorded (no comm_async times)" if s.hidden_comm_s is None
              else f"{ms(s.hidden_comm_s).strip()} ms/step per rank")
    lines.append(f"  communication: exposed {ms(s.exposed_comm_s).strip()} ms/step per rank, hidden {hidden}")
    if "tp_comm" in s.regions:
        share = s.regions["tp_comm"].median / s.step_time.median
        lines.append(f"  tensor-parallel communication (tp_comm, inside forward/backward): {share:.1%} of the step")
    lines.append(f"  throughput {s.tokens_per_s:,.1f} tokens/s   final loss {s.final_loss:.4f}"
                 f"   last validation loss {s.final_val_loss:.4f}")
    lines += decentralized_lines(record)
    ratio = f", compression ratio {s.compression_ratio:.2f}x" if s.compression_ratio else ""
    lines.append(f"  per step per rank: sent {megabytes(s.bytes_sent)}, received {megabytes(s.bytes_recv)}{ratio}")
    if s.group_bytes_sent:
        lines.append("  sent per group: " + ", ".join(f"{g} {megabytes(b)}" for g, b in s.group_bytes_sent.items()))
    if int((record.meta.get("layout_json") or {}).get("pp", 1)) > 1:
        lines.append(pipeline.format_bubble(pipeline.bubble(record, s.skipped)))
    if s.memory:
        lines.append("  memory per rank (max): " + ", ".join(f"{k} {megabytes(b)}" for k, b in s.memory.items()))
    lines += format_servers(read_servers(Path(record.path).parent))
    if s.stragglers:
        listed = ", ".join(f"rank {x.rank} +{x.excess:.1%} (+{ms(x.excess_s).strip()} ms)" for x in s.stragglers)
        lines.append(f"  stragglers (median step time > {metrics.STRAGGLER_THRESHOLD:.0%} above "
                     f"the median across ranks, {ms(s.step_time.median).strip()} ms): {listed}")
    else:
        lines.append(f"  stragglers: none (no rank > {metrics.STRAGGLER_THRESHOLD:.0%} above the median step time)")
    return "\n".join(lines)


def decentralized_lines(record):
    """Lines for replicas that differ (gossip): the consensus distance and the per-rank val-loss
    spread; for parameter-server workers: the staleness histogram and the pushes per rank."""
    lines = staleness_record_lines(record)
    consensus = record.metrics.get("consensus")
    if consensus is not None and np.isfinite(consensus).any():
        measured = np.isfinite(consensus).all(axis=1)
        mean = consensus[measured].mean(axis=1)                  # (measurements,) mean over ranks
        steps = record.step[measured]
        lines.append(f"  consensus distance (mean over ranks of |x_i - x_mean|^2): {mean[0]:.3e} at step "
                     f"{steps[0] + 1}, {mean[-1]:.3e} at step {steps[-1] + 1} ({len(mean)} measurements)")
    low, high = record.evals.get("val_loss_min"), record.evals.get("val_loss_max")
    if low is not None and len(low):
        lines.append(f"  last evaluation: val loss of the mean model {record.evals['val_loss'][-1]:.4f}, "
                     f"of the ranks' own models {low[-1]:.4f} .. {high[-1]:.4f}")
    return lines


def staleness_record_lines(record):
    """The histogram of the record's per-step, per-rank staleness (ps workers; the largest of the
    step's pushes where a rank pushed more than once in a round) and each rank's pushes."""
    staleness, pushes = record.metrics.get("staleness"), record.metrics.get("pushes")
    if staleness is None or not np.isfinite(staleness).any():
        return []
    values, counts = np.unique(staleness[np.isfinite(staleness)].astype(np.int64), return_counts=True)
    lines = ["  staleness of the pushes, from the record (per step and worker; the step's largest where it "
             "pushed more than once):"]
    lines += staleness_lines(dict(zip(values.tolist(), counts.tolist())))
    if pushes is not None:
        per_rank = np.nansum(pushes, axis=0).astype(np.int64)              # (P,) pushes of each worker
        lines.append("  pushes per worker: " + ", ".join(f"rank {r} {n}" for r, n in enumerate(per_rank)))
    return lines


def format_comparison(summaries):
    scale = metrics.scaling(summaries)
    base = min(summaries, key=lambda s: s.world_size)
    header = (f"{'run':<20}{'ranks':>6}{'step ms':>10}{'tokens/s':>13}{'compute':>9}{'exp.comm':>9}"
              f"{'MB sent':>9}{'ratio':>8}{'loss':>8}{'val':>8}{'speedup':>9}{'effic.':>8}")
    lines = [f"== comparison (speedup and efficiency from tokens/s against {base.name}, {base.world_size} ranks; "
             f"ratio = uncompressed / sent bytes; loss = last training loss, val = last validation loss)",
             header]
    for s, (speedup, efficiency) in zip(summaries, scale):
        lines.append(f"{s.name[:19]:<20}{s.world_size:>6}{s.step_time.median * 1e3:>10.2f}{s.tokens_per_s:>13,.0f}"
                     f"{s.compute_fraction:>9.1%}{s.comm_fraction:>9.1%}{s.bytes_sent / 1e6:>9.3f}"
                     f"{(f'{s.compression_ratio:.1f}x' if s.compression_ratio else '-'):>8}"
                     f"{s.final_loss:>8.3f}{s.final_val_loss:>8.3f}{speedup:>9.2f}{efficiency:>8.1%}")
    return "\n".join(lines)


def unique_names(records):
    """Run names for tables and file names: the directory name, numbered where two are equal."""
    names = [r.name for r in records]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def run(args):
    records = [read_run(d) for d in args.run_dirs]
    names = unique_names(records)
    summaries = [metrics.summarize(r, args.skip_steps, name) for r, name in zip(records, names)]
    for summary, record in zip(summaries, records):
        print(format_run(summary, record))
    if len(summaries) > 1:
        print(format_comparison(summaries))
    print(DEFINITIONS)
    if args.csv:
        from hpclm.analysis.tidy import write_csv
        try:
            write_csv(args.csv, records, names, args.skip_steps)
        except OSError as exc:
            raise UserError(f"cannot write --csv {args.csv}: {exc.strerror or exc}") from None
        print(f"wrote {args.csv}")
    if args.plots:
        from hpclm.analysis import plots
        try:
            written = plots.write_all(Path(args.plots), records, summaries, args.skip_steps)
            written += pipeline.write_timelines(Path(args.plots), records, summaries)
        except OSError as exc:
            raise UserError(f"cannot write --plots into {args.plots}: {exc.strerror or exc}") from None
        for path in written:
            print(f"wrote {path}")
    return 0
