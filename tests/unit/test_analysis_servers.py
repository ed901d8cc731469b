"""hpclm.analysis.servers: the servers' reports of a run directory, in server order, as lines with
the time split, bytes per update and a staleness histogram whose bars scale with the counts."""
import json

from hpclm.analysis.servers import format_servers, read_servers


def report(k, histogram):
    pushes = sum(histogram.values())
    return {"server": k, "mode": "async", "shard": [10 * k, 10 * k + 10], "workers": 2, "pushes_applied": pushes,
            "updates": pushes, "seconds": {"wait": 3.0, "apply": 1.0, "send": 0.0},
            "bytes_sent": 2e6 * pushes, "bytes_recv": 1e6 * pushes, "staleness_histogram": histogram}


def test_reports_in_server_order_with_scaled_histograms(tmp_path):
    for k in (10, 2):                                         # numeric order, not the file names' order
        (tmp_path / f"ps-server-{k}.json").write_text(json.dumps(report(k, {"0": 30, "3": 10})))
    reports = read_servers(tmp_path)
    assert [r["server"] for r in reports] == [2, 10]
    lines = format_servers(reports)
    assert len(lines) == 6 and lines[0].startswith("  server 2 (async, shard [20, 30), 2 workers): 40 pushes")
    assert "wait 3.00 s (75%), apply 1.00 s (25%)" in lines[0] and "sent 2.000 MB, received 1.000 MB" in lines[0]
    zero, three = lines[1], lines[2]
    assert "staleness   0:      30 ( 75.0%)" in zero and zero.count("#") == 40
    assert "staleness   3:      10 ( 25.0%)" in three and three.count("#") == 13


def test_a_run_without_servers_adds_nothing(tmp_path):
    assert read_servers(tmp_path) == [] and format_servers([]) == []
