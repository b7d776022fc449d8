// Block-wide reductions: softmax partials, sums and maxima (warp shuffles, then one warp
// over the per-warp results). Every thread gets the block's result.
#pragma once

#include <limits>

#include "common.cuh"
#include "unlearnx/row_math.h"

namespace unlearnx {

template <typename acc_t>
__device__ __forceinline__ SoftmaxPartial<acc_t> warp_merge(SoftmaxPartial<acc_t> p) {
UNLX_UNROLL
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

namespace unlearnx {

// Block-wide sums (or maxima) of N values per thread; every thread gets the results.
template <typename T, int kThreads, int N, bool kMax>
__device__ __forceinline__ void block_reduce(T (&v)[N]) {
  constexpr int kWarps = kThreads / 32;
  __shared__ T slots[N][kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  auto combine = [](T a, T b) { return kMax ? (a < b ? b : a) : a + b; };
  const T identity = kMax ? -std::numeric_limits<T>::infinity() : T(0);
UNLX_UNROLL
  for (int i = 0; i < N; ++i) {
UNLX_UNROLL
    for (int offset = 16; offset > 0; offset >>= 1) v[i] = combine(v[i], __shfl_xor_sync(0xffffffffu, v[i], offset));
    if (lane == 0) slots[i][warp] = v[i];
  }
  __syncthreads();
UNLX_UNROLL
  for (int i = 0; i < N; ++i) {
    v[i] = lane < kWarps ? slots[i][lane] : identity;
UNLX_UNROLL
    for (int offset = 16; offset > 0; offset >>= 1) v[i] = combine(v[i], __shfl_xor_sync(0xffffffffu, v[i], offset));
  }
  __syncthreads();  // the slots are reused by the next row
}

template <typename T, int kThreads, int N>
__device__ __forceinline__ void block_sum(T (&v)[N]) {
  block_reduce<T, kThreads, N, false>(v);
}

template <typename T, int kThreads, int N>
__device__ __forceinline__ void block_max(T (&v)[N]) {
  block_reduce<T, kThreads, N, true>(v);
}

}  // namespace unlearnx
