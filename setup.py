"""hpclm: communication-efficient training of GPT-style models with mpi4py + NumPy/CuPy."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = {}
exec((here / "hpclm" / "version.py").read_text(), version)

setup(
    name="hpclm",
    version=version["__version__"],
    description="Communication-efficient distributed training of Transformer LMs, written out in Python",
    long_description=(here / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hpclm", "hpclm.*"]),
    # CUDA kernels, found at run time by hpclm/compress/cuda.py (<sys.prefix>/share/hpclm/kernels)
    data_files=[("share/hpclm/kernels", sorted(str(p.relative_to(here)) for p in (here / "kernels").glob("*.cu*")))],
    install_requires=[
        "numpy>=1.24",
        "h5py>=3.8",
        "mpi4py>=4.0",
        "numba>=0.59",         # compiled CPU kernels (hpclm.compress.cpu, hpclm.model.fused); train.kernels
        "threadpoolctl>=3.1",  # single-threaded BLAS inside the row-slice threads (hpclm.model.threaded)
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={
        "mpich": ["mpich"],  # an MPI from PyPI for laptops and CI; clusters bring their own
        "gpu": ["cupy-cuda12x"],
        "plots": ["matplotlib"],
        "test": ["pytest", "matplotlib"],
    },
    entry_points={"console_scripts": ["hpclm=hpclm.cli:main"]},
)
