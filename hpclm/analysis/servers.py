"""The parameter servers' side of a run (parallel.sync = ps) for `hpclm analyze`: each server's
RUN_DIR/ps-server-<k>.json (written by hpclm.parallel.ps_server at the end of its loop) as lines
of text: pushes and updates, the time split (wait / apply / send), bytes per update, and the
histogram of the staleness of every applied gradient."""
import json
from pathlib import Path

BAR = 40          # characters of the longest histogram bar


def read_servers(run_dir):
    """[report dict] of the run's servers in server order ([] for a run without servers)."""
    paths = sorted(Path(run_dir).glob("ps-server-*.json"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return [json.loads(p.read_text()) for p in paths]


def staleness_lines(histogram):
    """One line per staleness value: its count and a bar scaled to the largest count."""
    counts = {int(k): v for k, v in histogram.items()}
    most = max(counts.values(), default=0)
    total = sum(counts.values())
    return [f"    staleness {s:>3}: {n:>7} ({n / total:6.1%}) {'#' * max(1, round(BAR * n / most))}"
            for s, n in sorted(counts.items())]


def format_servers(reports):
    lines = []
    for r in reports:
        sec = r["seconds"]
        total = sum(sec.values()) or 1.0
        updates = max(r["updates"], 1)
        lines.append(f"  server {r['server']} ({r['mode']}, shard [{r['shard'][0]}, {r['shard'][1]}), "
                     f"{r['workers']} workers): {r['pushes_applied']} pushes in {r['updates']} updates; time "
                     + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in sec.items())
                     + f"; per update sent {r['bytes_sent'] / updates / 1e6:.3f} MB, "
                     f"received {r['bytes_recv'] / updates / 1e6:.3f} MB")
        lines += staleness_lines(r["staleness_histogram"])
    return lines
