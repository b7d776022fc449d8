// CUDA max kernel: per row the maximum and its first index; NaN counts as the largest.
#include <limits>

#include "common.cuh"

namespace unlearnx {

namespace {

// Does (b, ib) beat (a, ia)? NaN beats numbers; ties go to the lower index.
template <typename acc_t>
__device__ __forceinline__ bool beats(acc_t a, int64_t ia, acc_t b, int64_t ib) {
  if (a != a) return b != b && ib < ia;
  if (b != b) return true;
  return b > a || (b == a && ib < ia);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    max_kernel(const scalar_t* __restrict__ z, int64_t rows, int64_t V, acc_t* __restrict__ out_max,
               int64_t* __restrict__ out_arg) {
  constexpr int kWarps = kRowThreads / 32;
  __shared__ acc_t s_val[kWarps];
  __shared__ int64_t s_idx[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* row = z + r * V;
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    int64_t idx = V;
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      const acc_t x = static_cast<acc_t>(row[v]);
      if (beats(m, idx, x, v)) m = x, idx = v;
    }
    for (int pass = 0; pass < 2; ++pass) {
UNLX_UNROLL
      for (int offset = 16; offset > 0; offset >>= 1) {
        const acc_t om = __shfl_xor_sync(0xffffffffu, m, offset);
        const int64_t oi = __shfl_xor_sync(0xffffffffu, idx, offset);
        if (beats(m, idx, om, oi)) m = om, idx = oi;
      }
      if (pass == 0) {
        if (lane == 0) s_val[warp] = m, s_idx[warp] = idx;
        __syncthreads();
        m = lane < kWarps ? s_val[lane] : -std::numeric_limits<acc_t>::infinity();
        idx = lane < kWarps ? s_idx[lane] : V;
      }
    }
    if (threadIdx.x == 0) out_max[r] = m, out_arg[r] = idx;
    __syncthreads();
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> UNLX_DEVICE_FN(max_stats)(const at::Tensor& logits) {
  check_logits(logits);
  device::Guard guard(logits);
  at::Tensor mx = acc_empty(logits);
  at::Tensor arg = at::empty({logits.size(0)}, logits.options().dtype(at::kLong));
  if (logits.size(0) == 0) return {mx, arg};
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "max_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    device::launch(max_kernel<scalar_t, acc_t>, row_blocks(logits.size(0)), kRowThreads,
        logits.const_data_ptr<scalar_t>(), logits.size(0), logits.size(1), mx.data_ptr<acc_t>(),
        arg.data_ptr<int64_t>());
  });
  return {mx, arg};
}

}  // namespace unlearnx
