// Block-wide merge of softmax partials (warp shuffles, then one warp over the
// per-warp results). Every thread gets the block's partial.
#pragma once

#include "unlearnx/row_math.h"

namespace unlearnx {

template <typename acc_t>
__device__ __forceinline__ SoftmaxPartial<acc_t> warp_merge(SoftmaxPartial<acc_t> p) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    SoftmaxPartial<acc_t> q{__shfl_xor_sync(0xffffffffu, p.max, offset),
                            __shfl_xor_sync(0xffffffffu, p.sumexp, offset)};
    p = softmax_merge(p, q);
  }
  return p;
}

template <typename acc_t, int kThreads>
__device__ __forceinline__ SoftmaxPartial<acc_t> block_merge(SoftmaxPartial<acc_t> p) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "whole warps, at most 32");
  constexpr int kWarps = kThreads / 32;
  __shared__ acc_t s_max[kWarps];
  __shared__ acc_t s_sum[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  p = warp_merge(p);
  if (lane == 0) {
    s_max[warp] = p.max;
    s_sum[warp] = p.sumexp;
  }
  __syncthreads();
  p = lane < kWarps ? SoftmaxPartial<acc_t>{s_max[lane], s_sum[lane]} : softmax_empty<acc_t>();
  p = warp_merge(p);
  __syncthreads();  // the shared slots are reused by the next row
  return p;
}

}  // namespace unlearnx
