"""openface-py: an OpenFace-style face recognition pipeline in Python."""

import re
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "openface_py" / "__init__.py").read_text()).group(1)
#: The shipped weights and their model card: the top-level models/ folder is the source of truth;
#: wheels carry a copy as package data (openface_py/models/), found by store.project_models_dir().
SHIPPED_MODELS = sorted(p.name for p in (HERE / "models").glob("*") if p.suffix in (".pt", ".md"))

#: The `ray` extra (--engine ray); see extras_require.
RAY = ["ray[data]>=2.40", "pyarrow>=14", "fsspec>=2023.1"]
#: The `openvino` extra: Intel's runtime runs MobileFaceNet's graph 1.4x eager PyTorch and 2.6x ONNX
#: Runtime on a CPU (BENCHMARKS.md); `--backend auto` uses it for that network when installed.
OPENVINO = ["openvino>=2024.0"]


class BuildPyWithModels(build_py):
    """build_py that also copies models/ into the built package (not for editable installs,
    which read the checkout's models/ directly)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "openface_py" / "models"
        dest.mkdir(parents=True, exist_ok=True)
        for name in SHIPPED_MODELS:
            self.copy_file(str(HERE / "models" / name), str(dest / name))


setup(
    name="openface-py",
    version=VERSION,
    description="OpenFace-style face detection, alignment, NN4-small2 embeddings and classification",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["openface_py", "openface_py.*"]),
    package_data={"openface_py": ["data/*.csv", "service/static/*.html"]},
    install_requires=[
        "dlib-bin>=19.24",  # prebuilt dlib wheel: `import dlib` without a compiler
        "face_recognition_models>=0.3.0",  # dlib's landmark, MMOD and ResNet .dat files
        "opencv-python-headless>=4.5",
        "torch>=2.0",  # install the CPU wheel first (see Makefile) to avoid a CUDA download
        "numpy>=1.22",
        "scikit-learn>=1.1",
        "joblib>=1.1",
        "skops>=0.10",  # classifier files whose loading cannot run code (scikit-learn's safe format)
        "tqdm>=4.60",  # progress bars on folder jobs
        "pillow>=9.1",  # decoding with EXIF orientation, every PNG mode, truncation errors
        "torchfile>=0.1.0",  # reader of OpenFace's original Torch7 .t7 weights
        "matplotlib>=3.5",  # ROC and accuracy plots of the LFW evaluation
        "onnxruntime>=1.16",  # fastest CPU backend for NN4-small2 (backends.py falls back without it)
        "onnx>=1.14",  # needed by torch.onnx.export to write the ONNX file
        "pytorch-metric-learning>=2.9,<3",  # triplet/contrastive/ArcFace losses and miners of train-net
        "faiss-cpu>=1.8",  # 1:N search of the face database (exact and IVF indexes, removal by id)
        "fastapi>=0.115",  # the HTTP service: routing, validation, OpenAPI docs at /docs
        "starlette>=0.44",  # (FastAPI's) multipart limits used directly: form(max_part_size=...)
        "uvicorn>=0.29",  # its ASGI server (one or several worker processes)
        "fastapi-offline>=1.7",  # the API docs' Swagger UI / ReDoc scripts packaged, not from a CDN (MIT)
        "python-multipart>=0.0.9",  # multipart photo uploads for FastAPI/Starlette
    ],
    # setuptools>=70.1 builds wheels itself: the wheel test builds one without a network
    extras_require={
        # --engine ray: Ray Data runs folder jobs on a cluster; pyarrow (which Ray Data brings) reads
        # photos from URLs and writes --format parquet; fsspec opens the URLs pyarrow does not know
        "ray": RAY,
        "openvino": OPENVINO,
        # pytest-xdist: `make test` runs the suite on two workers (most of its time is spent waiting on
        # subprocesses and loopback servers, so two workers halve it on a 2-core machine)
        "test": [
            "pytest>=7",
            "pytest-xdist>=3.5",
            "ruff>=0.4",
            "hypothesis>=6.100",
            "setuptools>=70.1",
            "httpx>=0.27",
            "selenium>=4.20",
        ]
        + RAY  # the Ray engine's tests run on a local Ray instance in CI
        + OPENVINO,  # and the OpenVINO backend's against eager
    },
    cmdclass={"build_py": BuildPyWithModels},
    entry_points={"console_scripts": ["openface-py=openface_py.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
