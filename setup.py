from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

EXTRAS = {
    # Fast .beton loading. Needs libturbojpeg and OpenCV headers (see README).
    "ffcv": ["ffcv==1.0.2", "numba>=0.60"],
    "detection": ["pycocotools>=2.0.7"],
    "dev": ["pytest>=8", "pytest-timeout", "pytest-xdist"],
}
EXTRAS["all"] = sorted({r for reqs in EXTRAS.values() for r in reqs})

setup(
    name="infoview",
    version="0.1.0",
    description="Self-supervised pretraining for images around mutual-information bounds",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["infoview", "infoview.*"]),
    # The packages live under the project's root, said explicitly: setuptools' editable install (`pip install -e
    # .`, as make does) then puts the root itself on sys.path (a .pth file), where the regular package is found
    # first. Without it, it installs an import hook that runs after sys.path is searched, so a folder named
    # infoview in the working directory (the clone's own, seen from its parent) was imported instead as an
    # empty namespace package (tests/test_install.py).
    package_dir={"": "."},
    # the presets (`--config demo`) ship inside the package: a wheel or a plain `pip install .` has them too
    package_data={"infoview": ["configs/*.yaml"]},
    install_requires=[
        "torch>=2.4",
        "torchvision",
        "timm>=1.0",
        "kornia>=0.7",
        "omegaconf>=2.3",
        "numpy",
        "pillow",
        "scikit-learn",
        "tqdm",
        "matplotlib",
        "tensorboard",
        "safetensors",
        "submitit",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["infoview=infoview.cli:main"]},
)
