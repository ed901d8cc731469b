"""`hpclm bench compress` and `hpclm bench model` end to end on one process: what their JSON says
is consistent with the compressors' byte formulas and the model's FLOP count; bad arguments are
one error (exit code 2)."""
import json

import pytest

from hpclm.bench.model import flops_per_token
from hpclm.cli import main
from hpclm.compress import build
from hpclm.config import CompressConfig, ModelConfig
from hpclm.model import GPT


def test_bench_compress_rows(tmp_path):
    out = tmp_path / "compress.json"
    names = ["signsgd", "int8", "topk", "powersgd"]
    assert main(["bench", "compress", "--sizes", "1K,4000", "--compressors", ",".join(names), "--repeats", "1",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    paths = ["numpy", "numba"]
    assert [(r["compressor"], r["kernels"], r["n"]) for r in rows] == [
        (c, k, n) for n in (1024, 4000) for c, k in [(c, k) for c in names for k in paths] + [("memcpy", "-")]]
    for n in (1024, 4000):
        for r in (r for r in rows if r["n"] == n and r["compressor"] != "memcpy"):
            wire = build(CompressConfig(name=r["compressor"], density=0.01)).payload_bytes(n)
            assert r["wire_bytes"] == wire and r["compression"] == pytest.approx(4 * n / wire)
            assert r["gbps"] == pytest.approx(4 * n / (r["t_ms"] * 1e-3) / 1e9)   # t_ms: median of compress + decompress
            assert r["ratio_min"] <= r["ratio_memcpy"] <= r["ratio_max"]


def test_bench_model_flops(tmp_path):
    out = tmp_path / "model.json"
    argv = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16", "--batch-size", "2"]
    assert main(["bench", "model", *argv, "--steps", "2", "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["kernels"] for r in rows] == ["numpy", "numba"]
    C, T, V = 32, 16, 65
    non_embedding = 12 * C * C + 13 * C + 2 * C + V * C      # one block's weights and biases, ln_f, wte as the head
    model = GPT(ModelConfig(vocab_size=V, block_size=T, n_layer=1, n_head=2, n_embd=C), seed=0)
    assert flops_per_token(model) == 6 * non_embedding + 12 * 1 * C * T
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(2 * T / (r["step_ms"] * 1e-3))
        assert r["model_gflops"] == pytest.approx(flops_per_token(model) * r["tokens_per_s"] / 1e9)
        assert r["mfu"] == pytest.approx(r["model_gflops"] / r["peak_gflops"]) and 0 < r["mfu"] < 1
        assert r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]


@pytest.mark.parametrize("argv", [["compress", "--sizes", "1X"], ["compress", "--sizes", "0"],
                                  ["compress", "--compressors", "bogus"], ["compress", "--repeats", "0"],
                                  ["model", "--steps", "0"], ["model", "--n-head", "3"],
                                  ["compress", "--kernels", "fortran"], ["model", "--kernels", "fortran"]])
def test_bad_arguments(argv, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hpclm: error:")
