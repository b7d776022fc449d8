// Explicit CPU ISA dispatch for the row loops. Each row loop is written once, as the
// always-inline `run` of a class template Rows<scalar_t, acc_t>; run_rows() compiles it
// three times (x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA, and the baseline the extension
// is built for) and calls the one selected at run time: the best the CPU has, or the one
// forced by UNLEARNX_CPU_ISA / unlearnx.set_cpu_isa(). Being explicit (rather than gcc
// target_clones, which pick silently) lets tests run every path the machine can execute.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define UNLX_X86_ISAS 1
#define UNLX_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#define UNLX_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#else
#define UNLX_X86_ISAS 0
#endif

#define UNLX_ROWS_INLINE __attribute__((always_inline)) inline

namespace unlearnx {

// Ordered: a CPU that runs one level runs every level below it.
enum class CpuIsa : int { baseline = 0, avx2 = 1, avx512 = 2 };

const char* cpu_isa_name(CpuIsa isa);
// The level rows run at now.
CpuIsa active_cpu_isa();
// The levels compiled into this build that this CPU can execute, best first.
std::vector<std::string> supported_cpu_isas();
// The levels compiled into this build, best first.
std::vector<std::string> compiled_cpu_isas();
// "auto" (the best supported), or one of supported_cpu_isas(); anything else raises
// ValueError naming the choices. Returns the previous level's name.
std::string set_cpu_isa(const std::string& name);

namespace isa_detail {

template <template <class, class> class Rows, class scalar_t, class acc_t, class... Args>
void rows_baseline(int64_t begin, int64_t end, Args... args) {
  Rows<scalar_t, acc_t>::run(begin, end, args...);
}

#if UNLX_X86_ISAS
template <template <class, class> class Rows, class scalar_t, class acc_t, class... Args>
UNLX_TARGET_AVX2 void rows_avx2(int64_t begin, int64_t end, Args... args) {
  Rows<scalar_t, acc_t>::run(begin, end, args...);
}

template <template <class, class> class Rows, class scalar_t, class acc_t, class... Args>
UNLX_TARGET_AVX512 void rows_avx512(int64_t begin, int64_t end, Args... args) {
  Rows<scalar_t, acc_t>::run(begin, end, args...);
}
#endif

}  // namespace isa_detail

// Rows<scalar_t, acc_t>::run(begin, end, args...) over [0, rows), split across threads, in
// the active ISA's build of the loop.
template <template <class, class> class Rows, class scalar_t, class acc_t, class... Args>
void run_rows(int64_t rows, Args... args) {
  using Fn = void (*)(int64_t, int64_t, Args...);
  Fn fn = &isa_detail::rows_baseline<Rows, scalar_t, acc_t, Args...>;
#if UNLX_X86_ISAS
  switch (active_cpu_isa()) {
    case CpuIsa::avx512:
      fn = &isa_detail::rows_avx512<Rows, scalar_t, acc_t, Args...>;
      break;
    case CpuIsa::avx2:
      fn = &isa_detail::rows_avx2<Rows, scalar_t, acc_t, Args...>;
      break;
    case CpuIsa::baseline:
      break;
  }
#endif
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) { fn(begin, end, args...); });
}

}  // namespace unlearnx
