// Helpers shared by the CPU row kernels: dtype dispatch and row-parallel loops.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "kernels.h"

namespace unlearnx {

// Rows split across threads; fn(begin, end) must be a call into a UNLX_CPU_CLONES function
// (a lambda body would not inherit the vector ISA of the clones).
template <typename Fn>
void for_rows(int64_t rows, const Fn& fn) {
  at::parallel_for(0, rows, 1, fn);
}

inline void check_targets_in_range(const int64_t* t, int64_t rows, int64_t V) {
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK_INDEX(t[r] >= 0 && t[r] < V, "target: value ", t[r], " at row ", r, " is outside [0, ", V, ")");
}

inline at::Tensor acc_empty(const at::Tensor& logits) {
  return at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
}

}  // namespace unlearnx
