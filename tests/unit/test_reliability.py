"""Issue 12: no silent data loss, no silent NaN, one line for every user mistake. Each test runs
the command and asserts the exit code, a single `hpclm: error:` line without traceback, and that
the files already there are unchanged (by checksum)."""
import hashlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import env, read_ckpt, summary, tiny_args  # noqa: E402

from hpclm.cli import main  # noqa: E402
from hpclm.timing.reader import read_run  # noqa: E402


def checksums(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(directory).iterdir())}


def one_error(capsys, argv):
    """Run `hpclm ...` in-process: exit 2, exactly one `hpclm: error:` line, no traceback."""
    capsys.readouterr()
    rc = main(argv)                      # a traceback would be an exception escaping here
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("hpclm:")]
    assert rc == 2, captured.err
    assert len(errors) == 1 and errors[0].startswith("hpclm: error: "), captured.err
    assert "Traceback" not in captured.err
    return errors[0]


# ------------------------------------------------------------------ 2: a run is never replaced silently
def test_second_run_into_a_run_dir_is_refused_unless_overwrite(tmp_path, capsys, cache):
    run_dir = tmp_path / "r"
    assert main(["train", "--out", str(run_dir)] + tiny_args(cache, steps=2)) == 0
    before = checksums(run_dir)
    msg = one_error(capsys, ["train", "--out", str(run_dir)] + tiny_args(cache, steps=3))
    assert "already holds a run" in msg and f"--resume {run_dir}" in msg and "--overwrite" in msg
    assert checksums(run_dir) == before
    assert main(["train", "--out", str(run_dir), "--overwrite"] + tiny_args(cache, steps=3)) == 0
    assert read_ckpt(run_dir)[2]["step"] == 3 and summary(run_dir)["end_step"] == 3


def test_resume_into_another_run_dir_is_refused(tmp_path, capsys, good_run, cache):
    other = tmp_path / "other"
    assert main(["train", "--out", str(other)] + tiny_args(cache, steps=2)) == 0
    before, good_before = checksums(other), checksums(good_run)
    msg = one_error(capsys, ["train", "--resume", str(good_run), "--out", str(other), "--set", "train.max_steps=6"])
    assert "already holds a run" in msg
    assert checksums(other) == before and checksums(good_run) == good_before


# ------------------------------------------------------------------ 3: damage inside a checkpoint
def test_damage_inside_checkpoint_is_refused(tmp_path, capsys, good_run):
    data = (good_run / "ckpt.h5").read_bytes()
    mid = len(data) // 2
    damaged = data[:mid] + np.random.default_rng(0).bytes(8192) + data[mid + 8192:]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ckpt.h5").write_bytes(damaged)
    msg = one_error(capsys, ["train", "--resume", str(tmp_path / "d"), "--set", "train.max_steps=6"])
    assert "ckpt.h5" in msg and ("damaged" in msg or "corrupt" in msg)
    assert (tmp_path / "d" / "ckpt.h5").read_bytes() == damaged
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["ckpt.h5"]


def test_version_1_checkpoint_without_digest_still_loads(tmp_path, good_run):
    old = tmp_path / "v1"
    old.mkdir()
    (old / "ckpt.h5").write_bytes((good_run / "ckpt.h5").read_bytes())
    with h5py.File(old / "ckpt.h5", "a") as f:
        f.attrs["version"] = 1
        del f.attrs["sha256"]
    assert main(["train", "--resume", str(old), "--set", "train.max_steps=5"]) == 0
    assert read_ckpt(old)[2]["step"] == 5 and read_ckpt(old)[2]["version"] == 2


# ------------------------------------------------------------------ 4: non-finite numbers
@pytest.mark.parametrize("assignment", ["optim.lr=nan", "optim.lr=inf", "optim.eps=nan", "optim.weight_decay=inf",
                                        "optim.grad_clip=nan", "compress.threshold=-inf", "comm.bucket_mb=nan"])
def test_non_finite_set_value_is_rejected(tmp_path, capsys, cache, assignment):
    msg = one_error(capsys, ["train", "--out", str(tmp_path / "r")] + tiny_args(cache, "--set", assignment))
    assert assignment.split("=")[0] in msg and "finite" in msg
    assert not (tmp_path / "r").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, cache):
    run_dir = tmp_path / "r"
    assert main(["train", "--out", str(run_dir)] + tiny_args(cache, steps=4)) == 0
    before = checksums(run_dir)
    # lr 1e30: the first update overflows the parameters, the next loss is NaN
    msg = one_error(capsys, ["train", "--resume", str(run_dir), "--set", "optim.lr=1e30", "--set", "train.max_steps=12"])
    assert "step 6" in msg and "nan" in msg
    assert {k: v for k, v in checksums(run_dir).items() if not k.startswith("timing-from-")} == before
    params, _, attrs = read_ckpt(run_dir)
    assert attrs["step"] == 4 and np.all(np.isfinite(params))


# ------------------------------------------------------------------ 5: ordinary mistakes, one line
def test_config_that_is_a_directory_or_binary(tmp_path, capsys, cache):
    (tmp_path / "bin.toml").write_bytes(bytes(range(256)) * 4)
    for config, words in ((tmp_path, "directory"), (tmp_path / "bin.toml", "not a text")):
        msg = one_error(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "r")] + tiny_args(cache))
        assert str(config) in msg and words in msg


def test_out_that_cannot_be_a_directory(tmp_path, capsys, cache):
    (tmp_path / "file").write_text("not a directory")
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        msg = one_error(capsys, ["train", "--out", str(out)] + tiny_args(cache))
        assert str(tmp_path / "file") in msg
    assert (tmp_path / "file").read_text() == "not a directory"


def test_analyze_output_that_cannot_be_written(tmp_path, capsys, good_run):
    (tmp_path / "file").write_text("x")
    one_error(capsys, ["analyze", str(good_run), "--plots", str(tmp_path / "file" / "plots")])
    msg = one_error(capsys, ["analyze", str(good_run), "--csv", str(tmp_path / "missing" / "t.csv")])
    assert "--csv" in msg
    assert (tmp_path / "file").read_text() == "x"


# ------------------------------------------------------------------ 7: a resumed run's whole record
def test_analyze_run_dir_sees_every_segment_of_a_resumed_run(tmp_path, capsys, cache):
    run_dir = tmp_path / "r"
    assert main(["train", "--out", str(run_dir)] + tiny_args(cache, steps=4)) == 0
    assert main(["train", "--resume", str(run_dir), "--set", "train.max_steps=6"]) == 0
    assert main(["train", "--resume", str(run_dir), "--set", "train.max_steps=9"]) == 0
    run = read_run(run_dir)
    assert list(run.step) == list(range(9))
    assert [(start, path.name, rows) for start, path, rows in run.segments] == [
        (0, "timing.h5", 4), (4, "timing-from-4.h5", 2), (6, "timing-from-6.h5", 3)]
    assert list(run.evals["step"]) == [3, 5, 8]
    capsys.readouterr()
    assert main(["analyze", str(run_dir), "--skip-steps", "0"]) == 0
    out = capsys.readouterr().out
    assert "9 steps counted" in out and "timing-from-6.h5" in out
    s = summary(run_dir)
    assert [(g["start_step"], g["end_step"]) for g in s["segments"]] == [(0, 4), (4, 6), (6, 9)]
    assert s["start_step"] == 6 and s["end_step"] == 9


# ------------------------------------------------------------------ 9: smaller ones
def test_sample_rejects_negative_top_k(good_run):
    proc = subprocess.run([sys.executable, "-m", "hpclm.cli", "sample", "--checkpoint", str(good_run), "--top-k", "-3"],
                          capture_output=True, text=True, timeout=60, env=env())
    assert proc.returncode == 2 and proc.stderr.startswith("hpclm: error: ") and proc.stderr.count("\n") == 1
    assert "--top-k" in proc.stderr and proc.stdout == ""


def test_more_threads_than_cores_warns_once(tmp_path, capsys, cache):
    assert main(["train", "--out", str(tmp_path / "r")] + tiny_args(cache, "--set", "train.threads=64", steps=1)) == 0
    out = capsys.readouterr().out
    assert out.count("warning:") == 1 and "64 threads" in out and "cores" in out


def test_mismatched_resume_names_missing_tensors(tmp_path, capsys, good_run):
    msg = one_error(capsys, ["train", "--resume", str(good_run), "--set", "model.tie_weights=false",
                             "--set", "train.max_steps=8", "--out", str(tmp_path / "o")])
    assert "None" not in msg and "lm_head.weight" in msg and "not in the checkpoint" in msg


def test_resume_with_other_data_names_the_data_not_vocab_size(tmp_path, capsys, good_run):
    (tmp_path / "other.txt").write_text("".join(chr(c) for c in range(32, 127)) * 100)
    msg = one_error(capsys, ["train", "--resume", str(good_run), "--data", str(tmp_path / "other.txt"),
                             "--set", "train.max_steps=8", "--out", str(tmp_path / "o")])
    assert "different vocabulary" in msg and "other.txt" in msg and "vocab_size" not in msg


def test_analyze_reports_eval_time_per_evaluation(tmp_path, capsys, cache):
    run_dir = tmp_path / "r"
    assert main(["train", "--out", str(run_dir)] + tiny_args(cache, "--set", "train.eval_interval=3", steps=9)) == 0
    capsys.readouterr()
    assert main(["analyze", str(run_dir)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("eval"))
    assert "[3x]" in row and float(row.split()[2]) > 0, row       # min ms of 3 evaluations (steps 3, 6, 9)


@pytest.mark.parametrize("argv, words", [(["train", "--help"], ["[compress]"]),
                                          (["sample", "--help"], ["default: 500", "default: 0.8", "default: 0)"]),
                                          (["bench", "model", "--help"], ["default: 4)", "default: 256", "default: 20"])])
def test_help_shows_sections_and_defaults(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for word in words:
        assert word in text, (word, text)


# ------------------------------------------------------------------ 8: a long set-up says so, once
def test_slow_setup_is_reported_once(capfd):
    import signal
    import time

    from hpclm.signals import RunSignals
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    signals = RunSignals({"signal": None}, rank=0, slow_setup_s=0.2)
    time.sleep(0.7)
    signals.start_loop()
    signals.restore()
    err = capfd.readouterr().err
    assert err.count("hpclm: still setting up after") == 1 and "waiting for another rank" in err, err
    assert {s: signal.getsignal(s) for s in before} == before
