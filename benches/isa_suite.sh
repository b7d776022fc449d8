#!/usr/bin/env bash
# The CPU ISA checks (issue #10) on a host whose CPU has AVX-512, such as a lent GPU host (Python
# with torch preinstalled, no package index, at most 10 minutes per command, 16 cores):
#   bash benches/isa_suite.sh OUT
# Builds as benches/gpu_suite.sh does (CUDA for the local GPU if there is one), then runs four
# jobs at once on disjoint cores, each with 2 threads, so that every timing is a 2-core one as on
# the development machine:
#   cores 0-1    benches.run: NLL fused / compiled / cut-cross-entropy at N = 512, 2048, 8192
#                (B=4, D=512, V=32000, fp32) at the best level           -> cpu-nll-best.json
#   cores 2-3    the same with everything held to AVX2 (below)           -> cpu-nll-avx2held.json
#                (SKIP_BEST=1: the held run only, torch.compile's on cores 0-1 in a process
#                of its own                                              -> ...-compiled.json)
#   cores 4-9    the quick demos on the CPU, DEMOS (default "held:0 held:1 held:2 best:0
#                best:1 best:2"; held: held to AVX2, best: the best level), dealt in turn to
#                the core pairs 4-5, 6-7, 8-9, 10-11, 12-13, 14-15; each pair runs its share one
#                after another, and the pairs from 10 on start once the tests are done
#                                                                        -> demos.log
#   cores 10-15  the kernel, loss and ISA tests on every level the CPU runs (and CUDA where
#                built), under pytest-xdist                              -> tests.log
# "Held to AVX2" is how this machine reproduces an AVX2-only one: UNLEARNX_CPU_ISA=avx2 for the
# row kernels, ATEN_CPU_CAPABILITY=avx2 for ATen, MKL_ENABLE_INSTRUCTIONS=AVX2 and
# ONEDNN_MAX_CPU_ISA=AVX2 for the GEMM libraries. The two benchmarks share the memory bus with
# the other jobs, so compare ratios within one file, not milliseconds across files.
# Packages the host lacks (rouge_score, nltk, cut-cross-entropy) come as wheels in .whl/ (see
# benches/gpu_suite.sh). Every job stops at SUITE_SECONDS (default 480) after the start.
# CHUNKS="auto 1048 2096" times the fused loss at each chunk size side by side (fused@<rows>;
# default: auto, the memory budget's); REPEATS (default 3) interleaved rounds per timing; TS
# (default "128 512 2048") the sequence lengths, N = 4 T. DEMOS="" runs no demo, TESTS=0 no
# test: a quieter machine for the benchmarks, e.g.
#   DEMOS= TESTS=0 TS=128 REPEATS=21 bash benches/isa_suite.sh OUT
# Sizing: a benchmark writes its records once every implementation of an N is timed. With the
# defaults every N finished in runs 1-2 on the H100 host; with five implementations (CHUNKS of
# three sizes) at REPEATS=4 the held-to-AVX2 one was still in N=8192 at SUITE_SECONDS=520 (run 3,
# benches/results/isa-h100-2026-11-26-run3/). Each quick demo takes about 100 s on 2 cores, so
# twelve DEMOS take about two rounds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: isa_suite.sh OUT}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
START=$(date +%s)
LOG="$OUT/suite.log"
left() {  # seconds to the deadline, at least 1 (timeout 0 would mean none)
  local s=$((START + ${SUITE_SECONDS:-480} - $(date +%s)))
  echo $((s > 0 ? s : 1))
}

{
  date -u
  grep -m1 "model name" /proc/cpuinfo
  echo "avx512f: $(grep -c avx512f /proc/cpuinfo) of $(nproc) logical CPUs"
} >> "$LOG"
# gpu_suite's build: the PATH's gcc, CUDA for the local GPU; it installs .whl/ for itself only
bash benches/gpu_suite.sh "$OUT" build || exit 1
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/unlearnx-site .whl/*.whl >> "$LOG" 2>&1
  export PYTHONPATH="$PWD:/tmp/unlearnx-site"
fi
export OMP_NUM_THREADS=2 TQDM_DISABLE=1 PYTHONUNBUFFERED=1
AVX2=(env UNLEARNX_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2)

bench() {  # cores name "impls" [env...]
  local cores=$1 name=$2 impls=$3
  shift 3
  # an Inductor cache of its own: two torch.compile runs sharing one is the likeliest cause of
  # the "buffer overflow detected" abort of the first run on the H100 host
  # shellcheck disable=SC2086
  timeout "$(left)" env TORCHINDUCTOR_CACHE_DIR="/tmp/inductor-$name" "$@" taskset -c "$cores" \
    "$PY" -m benches.run --device cpu --losses nll --impls $impls --chunk-size ${CHUNKS:-auto} \
    --B 4 --T ${TS:-128 512 2048} --D 512 --V 32000 --repeats "${REPEATS:-3}" \
    --formats json --name "$name" --out-dir "$OUT" >> "$OUT/$name.log" 2>&1
  echo "bench $name: rc $?, $(grep -c '"loss"' "$OUT/$name.json" 2> /dev/null || echo 0) records" >> "$LOG"
}

demo() {  # label seed first-core: one quick demo on the CPU; its table goes to demos.log
  local label=$1 seed=$2 core=$3 run=(env CUDA_VISIBLE_DEVICES=) log="/tmp/demo-$1-$2.log"
  # on the CPU: with a GPU in sight the trainer would move the demo's model onto it
  [ "$label" = held ] && run+=("${AVX2[@]:1}")
  timeout "$(left)" "${run[@]}" taskset -c "$core,$((core + 1))" "$PY" -m unlearnx.cli demo --quick \
    --seed "$seed" --out "/tmp/demo-$label-$seed" > "$log" 2>&1
  local rc=$?
  # one append per demo, so that the tables of demos ending together do not interleave
  { echo "== demo --quick --seed $seed, $label, cores $core-$((core + 1)): rc $rc"
    grep -v -e "it/s]" -e "s/it]" "$log" | tail -n 14; } > "$log.table"
  cat "$log.table" >> "$OUT/demos.log"
}

demo_pair() {  # pair (0-5) entries...: this pair's share of DEMOS, one after another
  local core=$((4 + 2 * $1)) entry
  shift
  for entry in "$@"; do
    case "$entry" in
      held:* | best:*) demo "${entry%%:*}" "${entry#*:}" "$core" ;;
      *) echo "DEMOS: '$entry' is not held:SEED or best:SEED" >> "$LOG" ;;
    esac
  done
}

if [ "${SKIP_BEST:-0}" = 1 ]; then
  # the held-to-AVX2 torch.compile run alone, so that its crash (if any) costs only its records
  bench 0,1 cpu-nll-avx2held-compiled compiled "${AVX2[@]}" &
  bench 2,3 cpu-nll-avx2held "fused cce" "${AVX2[@]}" &
else
  bench 0,1 cpu-nll-best "fused compiled cce" &
  bench 2,3 cpu-nll-avx2held "fused compiled cce" "${AVX2[@]}" &
fi
read -ra demo_list <<< "${DEMOS-held:0 held:1 held:2 best:0 best:1 best:2}"
shares=()
for i in "${!demo_list[@]}"; do shares[i % 6]+=" ${demo_list[i]}"; done
for pair in 0 1 2; do
  # shellcheck disable=SC2086
  demo_pair "$pair" ${shares[pair]:-} &
done
if [ "${TESTS:-1}" != 0 ]; then
  # 3 workers of 2 threads on 6 cores; under pytest-xdist a test that crashes its process fails alone
  workers=()
  "$PY" -c "import xdist" 2> /dev/null && workers=(-n 3)
  timeout "$(left)" taskset -c 10-15 "$PY" -m pytest -q -rs -p no:cacheprovider "${workers[@]}" tests/test_kernels.py \
    tests/test_functional.py tests/test_cpu_isa.py tests/test_toolchain.py > "$OUT/tests.log" 2>&1
  echo "tests: rc $?, $(tail -n 1 "$OUT/tests.log")" >> "$LOG"
fi
for pair in 3 4 5; do
  # shellcheck disable=SC2086
  demo_pair "$pair" ${shares[pair]:-} &
done
wait
echo "done in $(($(date +%s) - START)) s; files: $(ls "$OUT" | tr '\n' ' ')" >> "$LOG"
cat "$LOG"
