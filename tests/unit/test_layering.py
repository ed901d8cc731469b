"""The import layering of DESIGN.md, checked by parsing every module's imports."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "hpclm"
NO_MPI = ["model", "compress", "analysis", "config.py", "xp.py", "errors.py", "data.py", "timing"]
CUPY_ALLOWED = {"xp.py", "compress/cuda.py"}
# A lower layer never imports a higher one.
FORBIDDEN = {
    "model": ("hpclm.comm", "hpclm.parallel", "hpclm.train", "hpclm.cli", "hpclm.compress", "hpclm.timing"),
    "compress": ("hpclm.comm", "hpclm.parallel", "hpclm.train", "hpclm.cli", "hpclm.model"),
    "comm": ("hpclm.model", "hpclm.compress", "hpclm.parallel", "hpclm.train", "hpclm.cli"),
    "timing": ("hpclm.model", "hpclm.parallel", "hpclm.train", "hpclm.cli"),
    "analysis": ("hpclm.model", "hpclm.comm", "hpclm.parallel", "hpclm.train", "hpclm.cli"),
    "parallel": ("hpclm.train", "hpclm.cli"),
}


def imports(path):
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def files(part):
    target = PKG / part
    return [target] if target.is_file() else sorted(target.rglob("*.py"))


def test_no_mpi_below_parallel_layer():
    for part in NO_MPI:
        for f in files(part):
            assert not [m for m in imports(f) if m.split(".")[0] == "mpi4py"], f"{f} imports mpi4py"


def test_cupy_only_in_backend():
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG).as_posix()
        if rel not in CUPY_ALLOWED:
            assert not [m for m in imports(f) if m.split(".")[0] == "cupy"], f"{rel} imports cupy"


def test_imports_point_down():
    for part, banned in FORBIDDEN.items():
        for f in files(part):
            bad = [m for m in imports(f) if m.startswith(banned)]
            assert not bad, f"{f.relative_to(PKG)} imports {bad}"


def test_the_checker_sees_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import mpi4py.MPI\nfrom cupy import cuda\n")
    assert imports(probe) == ["mpi4py.MPI", "cupy"]
