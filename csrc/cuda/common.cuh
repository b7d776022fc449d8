// Helpers shared by the CUDA row kernels: device, launch shapes, outputs, target checks.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "cuda/device.cuh"
#include "kernels.h"

namespace unlearnx {

constexpr int kRowThreads = 256;

// The most blocks a launch puts along one grid dimension; rows past it are grid-strided. Any
// cap above the blocks a GPU holds at once (~1000 of 256 threads on an H100) keeps every SM
// busy; 65535 is also the hardware limit of gridDim.y, so one row count (> 65535) exercises
// every grid-stride loop, in the SIMT tests too.
constexpr int64_t kMaxGridRows = 65535;

// Statistics kernels: one block per row.
inline int row_blocks(int64_t rows) { return static_cast<int>(std::clamp<int64_t>(rows, 1, kMaxGridRows)); }

// Elementwise gradient kernels: x covers the vocabulary, y the rows.
inline dim3 elementwise_grid(int64_t rows, int64_t V) {
  return dim3(static_cast<unsigned>(std::min<int64_t>((V + kRowThreads - 1) / kRowThreads, 64)),
              static_cast<unsigned>(std::clamp<int64_t>(rows, 1, kMaxGridRows)));
}

inline at::Tensor acc_empty(const at::Tensor& logits) {
  return at::empty({logits.size(0)}, logits.options().dtype(acc_dtype(logits.scalar_type())));
}

// Targets in [0, V), checked before a launch so that a bad one raises IndexError like the CPU
// ops do instead of a device-side assert, which would leave the CUDA context unusable. One
// device-to-host copy of a flag per call; the kernels keep their assert as a second line.
inline void check_target_values(const at::Tensor& target, int64_t V) {
  if (target.numel() == 0) return;
  const at::Tensor bad = target.lt(0).logical_or_(target.ge(V));
  if (!bad.any().item<bool>()) return;
  const int64_t row = bad.nonzero().select(1, 0).select(0, 0).item<int64_t>();
  TORCH_CHECK_INDEX(false, "target: value ", target.select(0, row).item<int64_t>(), " at row ", row,
                    " is outside [0, ", V, ")");
}

}  // namespace unlearnx
