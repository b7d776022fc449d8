// Helpers shared by the CUDA row kernels: device and launch shapes.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

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

}  // namespace unlearnx
