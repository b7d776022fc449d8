// CUDA DiPO gradient kernel: z <- coef * (q+ - q-).
#include "common.cuh"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    dipo_grad_kernel(scalar_t* __restrict__ zs, const scalar_t* __restrict__ rs, const int64_t* __restrict__ top,
                     int64_t k, acc_t shift, const acc_t* __restrict__ ref_max, const acc_t* __restrict__ s_plus,
                     const acc_t* __restrict__ s_minus, const acc_t* __restrict__ coef, int64_t rows, int64_t V) {
  const acc_t down = exp_acc(-shift), up = exp_acc(shift);
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const int64_t* h = top + row * k;
    const acc_t m = ref_max[row], sp = s_plus[row], sm = s_minus[row], c = coef[row];
    for (int64_t v = blockIdx.x * static_cast<int64_t>(kRowThreads) + threadIdx.x; v < V;
         v += static_cast<int64_t>(gridDim.x) * kRowThreads) {
      bool in_top = false;
      for (int64_t j = 0; j < k; ++j) in_top |= h[j] == v;
      z[v] = static_cast<scalar_t>(dipo_grad(static_cast<acc_t>(r[v]), m, sp, sm, in_top ? down : acc_t(1),
                                             in_top ? up : acc_t(1), c));
    }
  }
}

}  // namespace

void dipo_grad_cuda_(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& top_idx,
                     const at::Tensor& ref_max, const at::Tensor& s_plus, const at::Tensor& s_minus, double shift,
                     const at::Tensor& coef) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0 && logits.is_contiguous(),
                    "logits: expected a contiguous [rows, V] tensor with V > 0, got ", logits.sizes());
  check_pair(ref_logits, logits);
  check_top_idx(top_idx, logits);
  const at::Tensor* rowvecs[] = {&ref_max, &s_plus, &s_minus, &coef};
  const char* names[] = {"ref_max", "s_plus", "s_minus", "coef"};
  for (int i = 0; i < 4; ++i) check_row_vector(*rowvecs[i], names[i], logits);
  c10::cuda::CUDAGuard guard(logits.device());
  if (logits.size(0) == 0) return;
  const auto m = ref_max.contiguous(), sp = s_plus.contiguous(), sm = s_minus.contiguous(), c = coef.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_grad_cuda_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dipo_grad_kernel<scalar_t, acc_t><<<elementwise_grid(logits.size(0), logits.size(1)), kRowThreads, 0, stream>>>(
        logits.data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(), top_idx.const_data_ptr<int64_t>(),
        top_idx.size(1), static_cast<acc_t>(shift), m.const_data_ptr<acc_t>(), sp.const_data_ptr<acc_t>(),
        sm.const_data_ptr<acc_t>(), c.const_data_ptr<acc_t>(), logits.size(0), logits.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace unlearnx
