#!/usr/bin/env bash
# The one GPU check (run on the GPU machine from the repository root, with dist/ carried from
# benches/gpu_prepare.sh): installs the wheel, finds NVRTC, runs the GPU tests (GPU vs the CPU
# engine, relative error < 1e-4) and the GPU bench against PyTorch on the same card. Aims to
# finish in under 5 minutes. Logs go to $OUT when it is set (the device tool's output folder).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
LOGS=${OUT:-/tmp}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "host: $(nproc) cores, $(python3 --version)"
python3 -m pip install --no-index --no-deps --force-reinstall dist/sparselin-*.whl -q 2>&1 | tail -3
python3 - <<'PY' || exit 1
import importlib
for m in ("numpy", "scipy", "sklearn", "torch", "pytest", "sparselin"):
    importlib.import_module(m)
print("imports ok")
PY
# NVRTC: from pip (torch's CUDA wheels, or nvidia-cuda-nvrtc) or a CUDA toolkit.
NVRTC_DIR=$(python3 - <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages(), "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/lib/x86_64-linux-gnu"]
for root in roots:
    hits = sorted(glob.glob(os.path.join(root, "**", "libnvrtc.so.13*"), recursive=True)) if os.path.isdir(root) else []
    if hits:
        print(os.path.dirname(hits[0])); sys.exit(0)
PY
)
echo "NVRTC: ${NVRTC_DIR:-not found (relying on cuda-pathfinder)}"
export LD_LIBRARY_PATH="${NVRTC_DIR}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
python3 -c "import sparselin as sl; print('gpu status:', sl.gpu.status())"
echo "== GPU tests"
timeout 150 python3 -m pytest tests/test_gpu.py -q -rfEs --tb=short -p no:cacheprovider 2>&1 | tee "$LOGS/gpu_tests.log" | tail -40
echo "== GPU bench"
timeout $(( 280 - ($(date +%s) - START) )) python3 benches/bench_gpu.py --rows 200000 --profile 2>&1 | tee "$LOGS/gpu_bench.log" | tail -70
echo "total $(( $(date +%s) - START )) s"
