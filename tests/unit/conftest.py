"""Fixtures of the `hpclm train` tests in this directory: a token cache and one finished tiny run."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from trainutil import tiny_args  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, cache):
    """A finished 4-step run whose checkpoint the error tests try to damage."""
    from hpclm.cli import main
    run_dir = tmp_path_factory.mktemp("good") / "run"
    assert main(["train", "--out", str(run_dir)] + tiny_args(cache, steps=4)) == 0
    return run_dir
