#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.py needs on the GPU machine, into .whl/ (ignored by git; carried).
# Its Python 3.12 has torch, torchvision, timm, numpy, safetensors, tqdm, matplotlib and tensorboard,
# but not omegaconf (infoview's configs; 2.4 needs no ANTLR runtime) nor lightly (the peer that the objectives, the views and
# lightly_simclr.py compare against; lightly.transforms needs lightning-utilities). kornia, submitit,
# ffcv and pycocotools are left out: the check's steps do not import them (views are made by the
# fused backend, the loaders are resident and pytorch), and the data has to fit beside them in
# the 64 MiB the device tool carries. ../shared/device/wheels.sh fetches the fuller set.
# Usage, from the project root: bash benchmarks/gpu_wheels.sh
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl 'omegaconf>=2.4' lightly==1.6.0 lightning-utilities
du -sh .whl
