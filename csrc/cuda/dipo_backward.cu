// CUDA DiPO gradient kernel: z <- coef * (q+ - q-).
#include "common.cuh"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    dipo_grad_kernel(scalar_t* __restrict__ zs, const scalar_t* __restrict__ rs, const acc_t* __restrict__ threshold,
                     acc_t shift, const acc_t* __restrict__ ref_max, const acc_t* __restrict__ s_out,
                     const acc_t* __restrict__ s_in, const acc_t* __restrict__ coef, int64_t rows, int64_t V) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const acc_t tau = threshold[row], m = ref_max[row], so = s_out[row], si = s_in[row], c = coef[row];
    const acc_t scale = dipo_scale(so, si, shift);
    for (int64_t v = blockIdx.x * static_cast<int64_t>(kRowThreads) + threadIdx.x; v < V;
         v += static_cast<int64_t>(gridDim.x) * kRowThreads) {
      const acc_t rv = static_cast<acc_t>(r[v]);
      z[v] = static_cast<scalar_t>(dipo_grad(rv, rv >= tau, m, so, si, scale, c));
    }
  }
}

}  // namespace

void dipo_grad_cuda_(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& threshold,
                     const at::Tensor& ref_max, const at::Tensor& s_out, const at::Tensor& s_in, double shift,
                     const at::Tensor& coef) {
  check_ref_args(logits, ref_logits, nullptr,
                 {{threshold, "threshold"}, {ref_max, "ref_max"}, {s_out, "s_out"}, {s_in, "s_in"}, {coef, "coef"}});
  c10::cuda::CUDAGuard guard(logits.device());
  if (logits.size(0) == 0) return;
  const auto t = threshold.contiguous(), m = ref_max.contiguous(), so = s_out.contiguous(), si = s_in.contiguous(),
             c = coef.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_grad_cuda_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dipo_grad_kernel<scalar_t, acc_t><<<elementwise_grid(logits.size(0), logits.size(1)), kRowThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(), t.const_data_ptr<acc_t>(),
        static_cast<acc_t>(shift), m.const_data_ptr<acc_t>(), so.const_data_ptr<acc_t>(), si.const_data_ptr<acc_t>(),
        c.const_data_ptr<acc_t>(), logits.size(0), logits.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace unlearnx
