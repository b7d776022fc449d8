// Helpers shared by the CPU row kernels: dtype dispatch and row-parallel loops.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <limits>

#include "isa.h"
#include "kernels.h"

namespace unlearnx {

inline void check_targets_in_range(const int64_t* t, int64_t rows, int64_t V) {
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_INDEX(t[r] >= 0 && t[r] < V, "target: value ", t[r], " at row ", r, " is outside [0, ", V, ")");
}

// The row's maximum in the accumulation type. NaN is skipped here; callers let it poison a sum.
template <typename acc_t, typename scalar_t>
UNLX_ROWS_INLINE acc_t row_max(const scalar_t* row, int64_t V) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<acc_t>(row[v]));
  return m;
}

inline at::Tensor acc_empty(const at::Tensor& logits) {
  return at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
}

}  // namespace unlearnx
