#!/usr/bin/env bash
# Run HERE (Rust, network) before a GPU session: builds the abi3 wheel into dist/, which the device
# run carries (`carry: ["dist"]`). The GPU machine has no Rust and no network, but its Python 3.12
# already holds every dependency (numpy, scipy, scikit-learn, tqdm, pytest, torch,
# nvidia-cuda-nvrtc, cuda-pathfinder), so the wheel is installed there with --no-deps.
# Then run benches/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf dist && mkdir -p dist
maturin build --release --out dist
du -sh dist
