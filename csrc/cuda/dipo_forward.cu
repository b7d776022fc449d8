// CUDA DiPO statistics: one block per row; a max pass, then one pass for the sums inside
// and outside the top set H (entries >= threshold).
#include <limits>

#include "block_reduce.cuh"
#include "common.cuh"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    dipo_stats_kernel(const scalar_t* __restrict__ zs, const scalar_t* __restrict__ rs,
                      const acc_t* __restrict__ threshold, acc_t shift, int64_t rows, int64_t V,
                      acc_t* __restrict__ ref_max, acc_t* __restrict__ s_out, acc_t* __restrict__ s_in,
                      acc_t* __restrict__ delta) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const acc_t tau = threshold[row];
    acc_t m[1] = {-std::numeric_limits<acc_t>::infinity()};
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) m[0] = fmax(m[0], static_cast<acc_t>(r[v]));
    block_max<acc_t, kRowThreads, 1>(m);
    acc_t s[4] = {0, 0, 0, 0};  // s_out, s_in, a_out, a_in
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      const acc_t rv = static_cast<acc_t>(r[v]);
      const acc_t e = exp_acc(rv - m[0]);
      const acc_t a = e * (static_cast<acc_t>(z[v]) - rv);
      const int in = rv >= tau;
      s[in] += e;
      s[2 + in] += a;
    }
    block_sum<acc_t, kRowThreads, 4>(s);
    if (threadIdx.x == 0) {
      ref_max[row] = m[0], s_out[row] = s[0], s_in[row] = s[1];
      delta[row] = dipo_delta(s[0], s[1], s[2], s[3], shift);
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dipo_stats_cuda(const at::Tensor& logits,
                                                                          const at::Tensor& ref_logits,
                                                                          const at::Tensor& threshold, double shift) {
  check_ref_args(logits, ref_logits, nullptr, {{threshold, "threshold"}});
  c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor ref_max = acc_empty(logits), s_out = acc_empty(logits), s_in = acc_empty(logits),
             delta = acc_empty(logits);
  if (logits.size(0) == 0) return {ref_max, s_out, s_in, delta};
  const auto tau = threshold.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dipo_stats_kernel<scalar_t, acc_t><<<row_blocks(logits.size(0)), kRowThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(), tau.const_data_ptr<acc_t>(),
        static_cast<acc_t>(shift), logits.size(0), logits.size(1), ref_max.data_ptr<acc_t>(), s_out.data_ptr<acc_t>(),
        s_in.data_ptr<acc_t>(), delta.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ref_max, s_out, s_in, delta};
}

}  // namespace unlearnx
