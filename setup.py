"""openface-py: an OpenFace-style face recognition pipeline in Python."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "openface_py" / "__init__.py").read_text()).group(1)

setup(
    name="openface-py",
    version=VERSION,
    description="OpenFace-style face detection, alignment, NN4-small2 embeddings and classification",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["openface_py", "openface_py.*"]),
    package_data={"openface_py": ["data/*.csv"]},
    install_requires=[
        "dlib-bin>=19.24",  # prebuilt dlib wheel: `import dlib` without a compiler
        "face_recognition_models>=0.3.0",  # dlib's landmark, MMOD and ResNet .dat files
        "opencv-python-headless>=4.5",
        "torch>=2.0",  # install the CPU wheel first (see Makefile) to avoid a CUDA download
        "numpy>=1.22",
        "scikit-learn>=1.1",
        "joblib>=1.1",
        "tqdm>=4.60",  # progress bars on folder jobs
        "pillow>=9.1",  # decoding with EXIF orientation, every PNG mode, truncation errors
        "torchfile>=0.1.0",  # reader of OpenFace's original Torch7 .t7 weights
        "matplotlib>=3.5",  # ROC and accuracy plots of the LFW evaluation
        "onnxruntime>=1.16",  # fastest CPU backend for NN4-small2 (backends.py falls back without it)
        "onnx>=1.14",  # needed by torch.onnx.export to write the ONNX file
    ],
    extras_require={"test": ["pytest>=7", "ruff>=0.4"]},
    entry_points={"console_scripts": ["openface-py=openface_py.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
