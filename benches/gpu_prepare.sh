#!/usr/bin/env bash
# Run HERE (Rust, network) before a GPU session: builds the abi3 wheel and downloads the Python
# 3.12 wheels the GPU machine may lack (it has no Rust and no network) into dist/, which the
# device run carries (`carry: ["dist"]`; 64 MiB at most). Then run benches/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist && mkdir -p dist/deps
maturin build --release --out dist
pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d dist/deps \
    scipy scikit-learn tqdm joblib threadpoolctl pytest pluggy iniconfig packaging cuda-pathfinder
rm -f dist/deps/numpy-*  # the GPU machine has numpy (and torch); this keeps dist/ well under 64 MiB
du -sh dist
