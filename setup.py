"""advseg: sketch colorization with an adversarial segmentation loss."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "advseg_cli" / "__init__.py").read_text()).group(1)

setup(
    name="advseg",
    version=VERSION,
    description="Sketch colorization with an adversarial segmentation loss (Hicsonmez et al., ICIP 2021)",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["advseg_cli", "advseg_cli.*", "hed", "hed.*"]),
    include_package_data=True,
    # Exact, known-good versions live in requirements.txt (what `make install` uses); these ranges
    # are what the code needs. torch/torchvision must be installed as a matching pair.
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "click>=8.1",
        "opencv-python-headless>=4.8",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-image>=0.22",
        "h5py>=3.8",
        "tqdm>=4.64",
        "pillow>=10.0",
        "transformers>=5.0",
        "pytorch-fid==0.3.0",
        "tensorboard>=2.15",
        "safetensors>=0.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": ["pytest>=8", "onnx>=1.15", "selenium>=4.20"],
        "bench": ["onnx>=1.15", "onnxruntime>=1.17"],
        # advseg export --format onnx, and colorize / serve on .onnx files
        "export": ["onnx>=1.15", "onnxruntime>=1.17"],
        # advseg serve. gradio declares pillow<13; `make install` keeps requirements.txt's pillow (see there)
        "serve": ["gradio>=5.0"],
        "mutation": ["mutmut==3.8.1"],  # make mutation (tests/mutation.py drives mutmut 3's command line)
        # detectron2 (the paper's Panoptic FPN) is not on PyPI: see its installation guide.
    },
    entry_points={"console_scripts": ["advseg=advseg_cli.cli:run"]},
)
