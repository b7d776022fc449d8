// Helpers shared by the CUDA row kernels: dispatch, launch shapes, outputs.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "kernels.h"

namespace unlearnx {

constexpr int kRowThreads = 256;

// Statistics kernels: one block per row (grid-strided past 2^20 rows).
inline int row_blocks(int64_t rows) { return static_cast<int>(std::min<int64_t>(std::max<int64_t>(rows, 1), 1 << 20)); }

// Elementwise gradient kernels: x covers the vocabulary, y the rows.
inline dim3 elementwise_grid(int64_t rows, int64_t V) {
  return dim3(static_cast<unsigned>(std::min<int64_t>((V + kRowThreads - 1) / kRowThreads, 64)),
              static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(rows, 1), 65535)));
}

inline at::Tensor acc_empty(const at::Tensor& logits) {
  return at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
}

}  // namespace unlearnx
