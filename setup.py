"""dalivssl: self-supervised video representation learning with NVIDIA DALI data loading."""
from setuptools import find_packages, setup

setup(
    name="dalivssl",
    version="0.1.0",
    description="Contextual self-supervised video representation learning benchmark on NVIDIA DALI",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["dalivssl*", "pipelines*", "models*", "benchmarks*"]),
    install_requires=[
        "nvidia-dali-cuda130",
        "torch",
        "torchvision",
        "cupy-cuda13x",
        "numpy",
        "click>=8.1",
        "rich",
        "h5py",
        "av",
        "pyyaml",
        "matplotlib",
        "tensorboard",
    ],
    package_data={"dalivssl.study": ["presets/*.yaml"]},
    # bench: the strongest CPU peer for `dalivssl bench loader` (also needs FFmpeg's shared
    # libraries: apt-get install ffmpeg)
    extras_require={"test": ["pytest", "pytest-timeout", "pytest-xdist", "submitit", "pyarrow"],
                    "study": ["submitit", "pyarrow"], "bench": ["torchcodec"]},
    entry_points={"console_scripts": ["dalivssl=dalivssl.cli:main"]},
)
