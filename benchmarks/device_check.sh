#!/usr/bin/env bash
# GPU device check (issue #18): on a machine with an NVIDIA GPU and a fresh checkout, run
#   bash benchmarks/device_check.sh            # measure; writes results/benchmarks/gpu.{json,md}
#   bash benchmarks/device_check.sh --dry      # no GPU needed: lower, schedule, nvcc sm_90; temp dir only
# Any other argument goes to `python -m benchmarks gpu` (--trials N, --larger none, --budget-s S, ...).
# Sized for one H200 and 16 cores in at most 8 minutes: 8 MetaSchedule trials per kernel, builds on all cores.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

# What the check needs. The GPU machine may be offline: each install is tried once, and what is
# missing afterwards is said, not hidden (the Python module reports which parts it could not run).
if ! "$PY" -c "import mpsearch, tvm, torch" >/dev/null 2>&1; then
  "$PY" -m pip install -q -e . || echo "device_check: could not install mpsearch's dependencies (offline?)"
fi
if ! "$PY" -c "import mpsearch, tvm, torch" >/dev/null 2>&1; then
  echo "device_check: mpsearch, apache-tvm or torch cannot be imported; install them (pip install -e .) and rerun" >&2
  exit 1
fi
# The peer: PyTorch eager on the GPU if this torch has CUDA, else ONNX Runtime's CUDA provider.
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1 \
   && ! "$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)" >/dev/null 2>&1 \
   && [[ " $* " != *" --dry "* ]]; then
  "$PY" -m pip install -q onnxruntime-gpu >/dev/null 2>&1 \
    || echo "device_check: no CUDA PyTorch and onnxruntime-gpu could not be installed: the GPU peer will be reported missing"
fi
if ! command -v nvcc >/dev/null && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  export PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"
fi
export TVM_NUM_THREADS="$(nproc)"  # MetaSchedule's builders and TVM's host code use every core
exec "$PY" -m benchmarks gpu "$@"
