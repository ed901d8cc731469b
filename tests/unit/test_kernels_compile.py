"""Every kernels/*.cu compiles with nvcc for sm_80 and sm_90 (skipped only without nvcc)."""
import shutil
import subprocess
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
SOURCES = sorted(KERNELS.glob("*.cu"))
NVCC = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))


def test_kernel_sources_exist():
    names = {p.stem for p in SOURCES}
    assert {"sign", "pack", "quantize", "topk", "ef"} <= names


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("src", SOURCES, ids=lambda p: p.name)
def test_compiles(src, arch, tmp_path):
    out = tmp_path / (src.stem + ".cubin")
    cmd = [NVCC, "-cubin", f"-arch={arch}", "-I", str(KERNELS), "-Werror", "all-warnings", "-o", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 0


def test_every_kernel_file_lists_its_versions():
    for src in SOURCES:
        head = src.read_text().split("#include")[0]
        assert "Versions:" in head and "_v1" in head, f"{src.name} lacks a versions header"
