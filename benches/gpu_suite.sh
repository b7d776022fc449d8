#!/usr/bin/env bash
# On a fresh GPU machine with a CUDA build of torch installed (the lent H100/H200 hosts have
# one): builds the extension for the local GPU, runs the CUDA tests, then the GPU benchmark
# (Llama-3, Llama-2 and Qwen-2.5 heads, bf16, N = 4k..128k tokens; fused, reference and
# torch.compile'd reference; for NLL also Liger-Kernel and cut-cross-entropy where importable),
# writing everything under one folder. Sized for one 10-minute command; lower the token counts
# with TOKENS="4096 16384" if it does not fit.
#   bash benches/gpu_suite.sh [OUT]        (default OUT: benches/results/gpu)
# The project's Python dependencies (transformers, accelerate, scipy, ...) must be importable.
# Wheels in .whl/ (for a machine with no package index: liger-kernel, cut-cross-entropy, made
# by `pip download --no-deps -d .whl liger-kernel cut-cross-entropy`) are installed first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benches/results/gpu}"
TOKENS="${TOKENS:-4096 16384 65536 131072}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/unlearnx-site .whl/*.whl \
    && export PYTHONPATH="/tmp/unlearnx-site${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  date -u
  nvidia-smi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/env.txt" 2>&1

arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
echo "building for sm_${arch/./}" | tee "$OUT/build.log"
TORCH_CUDA_ARCH_LIST="$arch" UNLEARNX_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" \
  "$PY" -m pip install -q --no-build-isolation --no-deps -e . >> "$OUT/build.log" 2>&1 || { echo "build failed"; exit 1; }

"$PY" -m pytest -q -rs tests/test_kernels.py tests/test_functional.py -k cuda > "$OUT/cuda-tests.log" 2>&1
echo "cuda tests: $(tail -n 1 "$OUT/cuda-tests.log")"

for head in "llama3 4096 128256" "llama2 4096 32000" "qwen25 3584 151936"; do
  set -- $head
  # shellcheck disable=SC2086
  "$PY" -m benches.run --device cuda --dtype bf16 --losses nll npo flatten --impls fused reference compiled liger cce \
    --B 1 --T $TOKENS --D "$2" --V "$3" --repeats 5 --name "gpu-$1" --out-dir "$OUT" > "$OUT/gpu-$1.log" 2>&1
  echo "$1: $(grep -c '"loss"' "$OUT/gpu-$1.log") records"
done
