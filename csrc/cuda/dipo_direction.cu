// CUDA DiPO direction kernel: one block per reference row; a max pass, one pass for the sums
// inside and outside the top set H (entries >= threshold), then r <- g = q+ - q- in place and
// <g, r> out.
#include <limits>

#include "block_reduce.cuh"
#include "common.cuh"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    dipo_direction_kernel(scalar_t* __restrict__ rs, const acc_t* __restrict__ threshold, acc_t shift,
                          int64_t rows, int64_t V, acc_t* __restrict__ offset) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    scalar_t* r = rs + row * V;
    const acc_t tau = threshold[row];
    acc_t m[1] = {-std::numeric_limits<acc_t>::infinity()};
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) m[0] = fmax(m[0], static_cast<acc_t>(r[v]));
    block_max<acc_t, kRowThreads, 1>(m);
    acc_t s[4] = {0, 0, 0, 0};  // s_out, s_in, b_out, b_in
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      const acc_t y = static_cast<acc_t>(r[v]) - m[0];
      const acc_t e = exp_acc(y);
      const int in = static_cast<acc_t>(r[v]) >= tau;
      s[in] += e;
      s[2 + in] += e * y;
    }
    block_sum<acc_t, kRowThreads, 4>(s);
    if (threadIdx.x == 0) offset[row] = dipo_inner(s[0], s[1], s[2], s[3], shift);
    const acc_t scale = dipo_scale(s[0], s[1], shift);
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      const acc_t rv = static_cast<acc_t>(r[v]);
      r[v] = static_cast<scalar_t>(dipo_direction(rv, rv >= tau, m[0], s[0], s[1], scale));
    }
  }
}

}  // namespace

at::Tensor dipo_direction_cuda_(const at::Tensor& ref_logits, const at::Tensor& threshold, double shift) {
  check_logits(ref_logits);
  check_row_vectors(ref_logits, {{threshold, "threshold"}});
  c10::cuda::CUDAGuard guard(ref_logits.device());
  at::Tensor offset = acc_empty(ref_logits);
  if (ref_logits.size(0) == 0) return offset;
  const auto tau = threshold.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  UNLEARNX_DISPATCH_LOGITS(ref_logits.scalar_type(), "dipo_direction_cuda_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dipo_direction_kernel<scalar_t, acc_t><<<row_blocks(ref_logits.size(0)), kRowThreads, 0, stream>>>(
        ref_logits.data_ptr<scalar_t>(), tau.const_data_ptr<acc_t>(), static_cast<acc_t>(shift), ref_logits.size(0),
        ref_logits.size(1), offset.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return offset;
}

}  // namespace unlearnx
