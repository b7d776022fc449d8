#!/usr/bin/env bash
# The GPU suite, for a fresh GPU host (Python with a CUDA build of torch preinstalled, maybe no
# package index, at most 10 minutes per command, few result files wanted back):
#   bash benches/gpu_suite.sh OUT              build, CUDA tests, then the benchmark, in one command
#   bash benches/gpu_suite.sh OUT build        or one stage per command: build | tests | bench
#   bash benches/gpu_suite.sh OUT bench llama3   ... a bench stage limited to some heads
# Everything lands in OUT (at most 6 files): suite.log (machine, torch, build, one line per
# step), cuda-tests.log, gpu-<head>.json per head (rewritten after every measurement, so a run
# cut short keeps what it measured) and summary.md. Each step runs under `timeout` within a
# budget of SUITE_SECONDS (default 540) for the whole command, so the command returns in time.
#
# The benchmark: per head (llama3: D 4096, V 128256; llama2: 4096, 32000; qwen25: 3584, 151936)
# and token count (TOKENS, default "4096 16384 65536 131072"), bf16, losses nll npo flatten,
# implementations IMPLS (default: fused reference compiled liger cce; a baseline that cannot be
# imported is skipped with the reason). Inputs are drawn on the device (benches.run --inputs
# random): no transformers, no host copy of a head or of N x V gradients.
# Without a package index, pytest (and liger-kernel, cut-cross-entropy) come from wheels in .whl/,
# made elsewhere by `pip download --no-deps -d .whl pytest pluggy iniconfig packaging liger-kernel
# cut-cross-entropy` and carried along. DEVICE=cpu runs the bench stage's Python path on the CPU
# (CI smoke-tests it at tiny sizes: SUITE_HEADS="tiny 16 64" TOKENS=8).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benches/results/gpu}"
shift || true
STAGE="${1:-all}"
shift || true
ONLY_HEADS="$*"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
TOKENS="${TOKENS:-4096 16384 65536 131072}"
IMPLS="${IMPLS:-fused reference compiled liger cce}"
SUITE_HEADS="${SUITE_HEADS:-llama3 4096 128256,llama2 4096 32000,qwen25 3584 151936}"
DEADLINE=$(($(date +%s) + ${SUITE_SECONDS:-540}))
LOG="$OUT/suite.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

say() { echo "$*" | tee -a "$LOG"; }
left() { echo $((DEADLINE - $(date +%s))); }

if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/unlearnx-site .whl/*.whl >> "$LOG" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:/tmp/unlearnx-site"
fi

build() {
  {
    date -u
    command -v nvidia-smi > /dev/null && nvidia-smi
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  } >> "$LOG" 2>&1
  # pyproject.toml's floor: torch.library.custom_op / register_fake as unlearnx uses them
  "$PY" -c "import sys, torch; sys.exit(tuple(map(int, torch.__version__.split('+')[0].split('.')[:2])) < (2, 6))" \
    || { say "build: torch $("$PY" -c 'import torch; print(torch.__version__)' 2>&1) is older than 2.6, which unlearnx needs"; return 1; }
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || { say "no usable GPU"; return 1; }
  # setup.py in place, not pip: no index needed, and no build isolation. The PATH's gcc, not
  # whatever CC/CXX the host exports: an H200 host's CXX=/opt/gcc/bin/g++ linked libstdc++
  # statically, which setup.py now refuses (unlearnx/_toolchain.py); SUITE_CC/SUITE_CXX override.
  say "build: for sm_${arch/./} with CC=${SUITE_CC:-gcc} CXX=${SUITE_CXX:-g++}, SIMT ${UNLEARNX_SIMT:-0}"
  CC="${SUITE_CC:-gcc}" CXX="${SUITE_CXX:-g++}" UNLEARNX_SIMT="${UNLEARNX_SIMT:-0}" \
    TORCH_CUDA_ARCH_LIST="$arch" UNLEARNX_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" \
    timeout "$(left)" "$PY" setup.py build_ext --inplace >> "$LOG" 2>&1 || { say "build: FAILED (see suite.log)"; return 1; }
  "$PY" -c "import unlearnx, json; print('build_info:', json.dumps(unlearnx.build_info()))" 2>&1 | tee -a "$LOG"
}

tests() {
  if ! "$PY" -c "import pytest" 2> /dev/null; then
    say "tests: pytest is not importable; carry it in .whl/ (see the header)"
    return 1
  fi
  # with pytest-xdist, a test that crashes the process fails alone instead of ending the run
  local workers=()
  "$PY" -c "import xdist" 2> /dev/null && workers=(-n 6)
  timeout "$(left)" "$PY" -m pytest -q -rs -p no:cacheprovider "${workers[@]}" tests/test_kernels.py \
    tests/test_functional.py tests/test_toolchain.py -k "cuda or toolchain" > "$OUT/cuda-tests.log" 2>&1
  say "tests: $(tail -n 1 "$OUT/cuda-tests.log")"
}

bench() {
  local heads=() head
  IFS=',' read -r -a heads <<< "$SUITE_HEADS"
  local todo=()
  for head in "${heads[@]}"; do
    read -r name _ _ <<< "$head"
    if [ -z "$ONLY_HEADS" ] || [[ " $ONLY_HEADS " == *" $name "* ]]; then todo+=("$head"); fi
  done
  local i=0
  for head in "${todo[@]}"; do
    read -r name D V <<< "$head"
    # an equal share of the time left to each head still to run
    local budget=$(($(left) / (${#todo[@]} - i)))
    i=$((i + 1))
    if [ "$budget" -lt 20 ]; then
      say "bench $name: skipped, out of time"
      continue
    fi
    # shellcheck disable=SC2086
    timeout "$budget" "$PY" -m benches.run --device "$DEVICE" --dtype bf16 --inputs random --formats json \
      --losses nll npo flatten --impls $IMPLS --B 1 --T $TOKENS --D "$D" --V "$V" --repeats 5 \
      --name "gpu-$name" --out-dir "$OUT" >> "$LOG" 2>&1
    local rc=$?
    say "bench $name: $(grep -c '"loss"' "$OUT/gpu-$name.json" 2> /dev/null || echo 0) records$([ $rc -eq 124 ] && echo ", stopped at its ${budget} s share")"
  done
  "$PY" - "$OUT" <<'EOF' >> "$LOG" 2>&1
import json, sys
from pathlib import Path

from benches.run import markdown

out = Path(sys.argv[1])
parts = []
for path in sorted(out.glob("gpu-*.json")):
    records = json.loads(path.read_text() or "[]")
    parts.append(f"## {path.stem}\n\n{markdown(records)}")
(out / "summary.md").write_text("\n".join(parts))
print("summary.md written")
EOF
}

case "$STAGE" in
  all) build && { tests; bench; } ;;
  build | tests | bench) "$STAGE" ;;
  *) echo "unknown stage $STAGE (all, build, tests, bench)" >&2; exit 2 ;;
esac
say "done in $((${SUITE_SECONDS:-540} - $(left))) s; files: $(ls "$OUT" | tr '\n' ' ')"
