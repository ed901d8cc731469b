"""`hpclm train` from the command line: one clear message for every bad input, TOML + --set,
bit-exact resume, timing record and summary, and `hpclm sample` on the resulting checkpoint."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import assert_same_state, env, read_ckpt, summary, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402


def train_error(capsys, argv):
    """Run `hpclm train ...` in-process; it must return 2 with exactly one `hpclm: error:` line."""
    capsys.readouterr()
    rc = main(["train"] + argv)       # a traceback would be an exception escaping here
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("hpclm: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------ bad input
def test_missing_data_file(tmp_path, capsys, cache):
    msg = train_error(capsys, ["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")] + tiny_args(cache))
    assert "not found" in msg and "nope.txt" in msg


def test_empty_data_file(tmp_path, capsys, cache):
    (tmp_path / "empty.txt").write_bytes(b"")
    msg = train_error(capsys, ["--data", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "r")] + tiny_args(cache))
    assert "empty" in msg


@pytest.mark.parametrize("payload", [b"hello \xff\xfe world" * 20, b"abc\x00\x01def" * 20], ids=["not-utf8", "control"])
def test_binary_data_with_char_tokenizer(tmp_path, capsys, cache, payload):
    (tmp_path / "bin.dat").write_bytes(payload)
    msg = train_error(capsys, ["--data", str(tmp_path / "bin.dat"), "--out", str(tmp_path / "r")] + tiny_args(cache))
    assert "byte" in msg  # points to data.tokenizer = "byte"


def test_unknown_key_lists_valid_keys(tmp_path, capsys, cache):
    msg = train_error(capsys, tiny_args(cache, "--set", "model.n_layers=2", "--out", str(tmp_path / "r")))
    assert "model.n_layers" in msg and "n_layer" in msg and "n_embd" in msg and "block_size" in msg


def test_wrong_type(tmp_path, capsys, cache):
    msg = train_error(capsys, tiny_args(cache, "--set", "model.n_layer=abc", "--out", str(tmp_path / "r")))
    assert "model.n_layer" in msg and "int" in msg and "abc" in msg


def test_unknown_section(tmp_path, capsys, cache):
    msg = train_error(capsys, tiny_args(cache, "--set", "modle.n_layer=2", "--out", str(tmp_path / "r")))
    assert "modle" in msg and "model" in msg and "train" in msg


def test_block_size_larger_than_data(tmp_path, capsys, cache):
    (tmp_path / "small.txt").write_text("a tiny corpus of text. " * 4)   # 92 chars: 82 train, 10 val
    msg = train_error(capsys, ["--data", str(tmp_path / "small.txt"), "--out", str(tmp_path / "r")] + tiny_args(cache))
    assert "block_size" in msg and "16" in msg
    assert not (tmp_path / "r" / "ckpt.h5").exists()


def test_bad_toml_file(tmp_path, capsys, cache):
    (tmp_path / "bad.toml").write_text("[model\nn_layer = 2\n")
    msg = train_error(capsys, ["--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "r")] + tiny_args(cache))
    assert "bad.toml" in msg and "TOML" in msg


def test_corrupt_checkpoint_random_bytes(tmp_path, capsys, cache):
    bad = tmp_path / "ckpt.h5"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    msg = train_error(capsys, ["--resume", str(bad)])
    assert "ckpt.h5" in msg and ("corrupt" in msg or "not an hpclm checkpoint" in msg)
    assert bad.read_bytes() == np.random.default_rng(0).bytes(4096)


def test_truncated_checkpoint(tmp_path, capsys, good_run):
    data = (good_run / "ckpt.h5").read_bytes()
    bad = tmp_path / "trunc" / "ckpt.h5"
    bad.parent.mkdir()
    bad.write_bytes(data[: len(data) // 2])
    msg = train_error(capsys, ["--resume", str(bad.parent)])
    assert "corrupt or truncated" in msg
    assert bad.read_bytes() == data[: len(data) // 2]


def test_checkpoint_of_other_file_kind(tmp_path, capsys):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    msg = train_error(capsys, ["--resume", str(tmp_path / "other.h5")])
    assert "not an hpclm checkpoint" in msg


def test_mismatched_checkpoint_keeps_good_checkpoint(tmp_path, capsys, good_run):
    before = (good_run / "ckpt.h5").read_bytes()
    msg = train_error(capsys, ["--resume", str(good_run), "--set", "model.n_embd=32", "--set", "train.max_steps=8"])
    assert "does not match" in msg and "wte" in msg
    assert (good_run / "ckpt.h5").read_bytes() == before
    assert sorted(os.listdir(good_run)) == ["ckpt.h5", "summary.json", "timing.h5"]  # no stray temp files


def test_failing_fresh_run_into_same_dir_keeps_checkpoint(tmp_path, capsys, good_run, cache):
    before = (good_run / "ckpt.h5").read_bytes()
    train_error(capsys, ["--data", str(tmp_path / "missing.txt"), "--out", str(good_run)] + tiny_args(cache))
    train_error(capsys, ["--out", str(good_run)] + tiny_args(cache, "--set", "train.batch_size=0"))
    assert (good_run / "ckpt.h5").read_bytes() == before


def test_resume_rejects_config_file(tmp_path, capsys, good_run):
    (tmp_path / "c.toml").write_text("[train]\nmax_steps = 8\n")
    msg = train_error(capsys, ["--resume", str(good_run), "--config", str(tmp_path / "c.toml")])
    assert "--resume" in msg and "--set" in msg


@pytest.mark.parametrize("bad", ["model.n_layer=abc", "nosuch.key=1"])
def test_subprocess_exit_code_and_no_traceback(tmp_path, cache, bad):
    cmd = [sys.executable, "-m", "hpclm.cli", "train", "--out", str(tmp_path / "r")] + tiny_args(cache, "--set", bad)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [proc.stderr.strip()]
    assert proc.stderr.startswith("hpclm: error: ")


# ------------------------------------------------------------------------------------ good runs
def test_toml_config_and_set_override(tmp_path, cache):
    (tmp_path / "exp.toml").write_text(
        "[model]\nn_layer = 2\nn_embd = 24\nn_head = 3\n\n[train]\nmax_steps = 3\nseed = 7\n")
    run_dir = tmp_path / "r"
    argv = ["train", "--config", str(tmp_path / "exp.toml"), "--out", str(run_dir)]
    sets = tiny_args(cache, steps=3)
    # keep the TOML's model shape and seed: drop tiny_args' model.n_layer/n_embd/n_head
    sets = [a for i, a in enumerate(sets) if not (a.startswith("model.n_") or (a == "--set" and sets[i + 1].startswith("model.n_")))]
    assert main(argv + sets + ["--set", "model.n_layer=1", "--set", "train.max_steps=2"]) == 0
    _, _, attrs = read_ckpt(run_dir)
    cfg = json.loads(attrs["config_json"])
    assert cfg["model"]["n_layer"] == 1          # --set beats the file
    assert cfg["model"]["n_embd"] == 24 and cfg["model"]["n_head"] == 3 and cfg["train"]["seed"] == 7  # from the file
    assert attrs["step"] == 2 and summary(run_dir)["end_step"] == 2


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_resume_is_bit_exact(tmp_path, cache, dtype):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", "--out", str(straight)] + tiny_args(cache, steps=8, dtype=dtype)) == 0
    assert main(["train", "--out", str(split)] + tiny_args(cache, steps=4, dtype=dtype)) == 0
    half, _, attrs = read_ckpt(split)
    assert attrs["step"] == 4 and half.dtype == np.dtype(dtype)
    assert main(["train", "--resume", str(split / "ckpt.h5"), "--set", "train.max_steps=8"]) == 0
    assert_same_state(straight / "ckpt.h5", split / "ckpt.h5")
    assert not np.array_equal(half, read_ckpt(split)[0])     # it did train on
    s = summary(split)
    assert s["start_step"] == 4 and s["end_step"] == 8
    assert s["val_loss"] == summary(straight)["val_loss"]


def test_timing_record_summary_and_analyze(tmp_path, cache, capsys):
    from hpclm.timing.reader import read_run
    run_dir = tmp_path / "r"
    assert main(["train", "--out", str(run_dir)] + tiny_args(cache, steps=5)) == 0
    run = read_run(run_dir)
    assert run.world_size == 1 and list(run.step) == [0, 1, 2, 3, 4]
    assert np.all(run.per_rank["tokens"] == 4 * 16)
    assert np.all(np.isfinite(run.per_rank["loss"]))
    s = summary(run_dir)
    assert s["end_step"] == 5 and s["world_size"] == 1 and np.isfinite(s["val_loss"]) and s["tokens_per_second"] > 0
    assert len(run.evals["val_loss"]) >= 1 and run.evals["val_loss"][-1] == pytest.approx(s["val_loss"])
    capsys.readouterr()
    assert main(["analyze", str(run_dir)]) == 0
    assert "1 ranks" in capsys.readouterr().out


def test_in_process_train_restores_signal_handlers(tmp_path, cache):
    """`hpclm.cli.main(["train", ...])` called from Python (tests, notebooks) must not leave its
    SIGTERM/SIGUSR1 handlers installed: afterwards SIGTERM would only set a flag nobody reads."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    assert main(["train", "--out", str(tmp_path / "r")] + tiny_args(cache, steps=1)) == 0
    after = {s: signal.getsignal(s) for s in before}
    assert after == before


# ------------------------------------------------------------------------------------ sample
def _has_sample():
    try:
        import hpclm.sample  # noqa: F401
        return True
    except ModuleNotFoundError:
        return False


@pytest.mark.skipif(not _has_sample(), reason="hpclm/sample.py is not part of this tree yet")
def test_sample_from_checkpoint(good_run):
    cmd = [sys.executable, "-m", "hpclm.cli", "sample", "--checkpoint", str(good_run), "--prompt", "The cat",
           "--tokens", "20", "--temperature", "0.8", "--top-k", "5", "--seed", "3"]
    a = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env())
    b = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env())
    assert a.returncode == 0, a.stderr
    text = a.stdout.rstrip("\n")
    assert text.startswith("The cat") and len(text) == len("The cat") + 20, repr(text)
    assert a.stdout == b.stdout          # same seed, same text


def test_resume_keeps_earlier_timing_record(tmp_path, cache):
    """Requeued (pre-empted, resumed) jobs must not erase the timing of the steps run before: the
    record of steps 0..3 survives a resume, in timing.h5 or in another timing*.h5 of the run dir."""
    from hpclm.timing.reader import read_run
    run_dir = tmp_path / "r"
    assert main(["train", "--out", str(run_dir)] + tiny_args(cache, steps=4)) == 0
    assert main(["train", "--resume", str(run_dir), "--set", "train.max_steps=6"]) == 0
    steps = set()
    for path in sorted(run_dir.glob("timing*.h5")):
        steps |= {int(s) for s in read_run(path).step}
    assert steps == set(range(6)), sorted(steps)


def _sample(ckpt, *extra):
    cmd = [sys.executable, "-m", "hpclm.cli", "sample", "--checkpoint", str(ckpt)] + list(extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env())


@pytest.mark.skipif(not _has_sample(), reason="hpclm/sample.py is not part of this tree yet")
def test_sample_top1_is_greedy_and_crops_long_prompts(good_run):
    prompt = "The old cats chase a red ball near the river. "        # longer than block_size 16
    a = _sample(good_run, "--prompt", prompt, "--tokens", "12", "--top-k", "1", "--seed", "1")
    b = _sample(good_run, "--prompt", prompt, "--tokens", "12", "--top-k", "1", "--seed", "2")
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout                                   # top-1 ignores the seed
    assert a.stdout.startswith(prompt) and len(a.stdout.rstrip("\n")) == len(prompt) + 12


@pytest.mark.skipif(not _has_sample(), reason="hpclm/sample.py is not part of this tree yet")
@pytest.mark.parametrize("case", ["unknown-char", "temperature", "corrupt"])
def test_sample_bad_input(tmp_path, good_run, case):
    ckpt, extra = good_run, ["--prompt", "The cat", "--tokens", "5"]
    if case == "unknown-char":
        extra = ["--prompt", "caf\u00e9 \u2603", "--tokens", "5"]          # not in the built-in corpus
    elif case == "temperature":
        extra += ["--temperature", "0"]
    else:
        ckpt = tmp_path / "ckpt.h5"
        ckpt.write_bytes((good_run / "ckpt.h5").read_bytes()[:3000])
    proc = _sample(ckpt, *extra)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("hpclm: error: ") and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == ""
