// Helpers shared by the CPU row kernels: dtype dispatch and row-parallel loops.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <limits>

#include "isa.h"
#include "kernels.h"

namespace unlearnx {

// The row's maximum in the accumulation type. NaN is skipped here; callers let it poison a sum.
template <typename acc_t, typename scalar_t>
UNLX_ROWS_INLINE acc_t row_max(const scalar_t* row, int64_t V) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<acc_t>(row[v]));
  return m;
}

}  // namespace unlearnx
