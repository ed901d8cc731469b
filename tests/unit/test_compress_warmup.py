"""compress.warmup_steps: the first N steps average uncompressed, then compression starts."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import read_ckpt, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402


def train(tmp_path, name, *sets, steps=3):
    run = tmp_path / name
    assert main(["train", "--out", str(run)] + tiny_args(tmp_path / "cache", *sets, steps=steps)) == 0
    return read_ckpt(run)[0]


@pytest.mark.parametrize("compressor", ["topk", "powersgd", "ef_sign"])
def test_warmup_steps_train_exactly_like_no_compression(tmp_path, compressor):
    plain = train(tmp_path, "none")
    warm = train(tmp_path, f"{compressor}-warm", "--set", f"compress.name={compressor}",
                 "--set", "compress.warmup_steps=3")
    cold = train(tmp_path, f"{compressor}-cold", "--set", f"compress.name={compressor}")
    assert np.array_equal(warm, plain)
    assert not np.allclose(cold, plain)


def test_compression_starts_after_the_warmup(tmp_path):
    plain = train(tmp_path, "none", steps=4)
    warm = train(tmp_path, "warm", "--set", "compress.name=topk", "--set", "compress.warmup_steps=3", steps=4)
    assert not np.allclose(warm, plain)


def test_negative_warmup_is_rejected(tmp_path, capsys):
    assert main(["train", "--set", "compress.warmup_steps=-1"] + tiny_args(tmp_path)) == 2
    assert "compress.warmup_steps must be >= 0" in capsys.readouterr().err
