// CUDA gradient kernel for policy+reference losses: z <- d/dz [a log p(target) + c KL].
#include "common.cuh"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    ref_grad_kernel(scalar_t* __restrict__ zs, const scalar_t* __restrict__ rs, const int64_t* __restrict__ target,
                    const acc_t* __restrict__ lse, const acc_t* __restrict__ ref_lse, const acc_t* __restrict__ logp,
                    const acc_t* __restrict__ ref_logp, const acc_t* __restrict__ a, const acc_t* __restrict__ c,
                    int64_t rows, int64_t V) {
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const int64_t t = target[row];
    const acc_t lz = lse[row], lr = ref_lse[row], ar = a[row], cr = c[row];
    for (int64_t v = blockIdx.x * static_cast<int64_t>(kRowThreads) + threadIdx.x; v < V;
         v += static_cast<int64_t>(gridDim.x) * kRowThreads) {
      z[v] = static_cast<scalar_t>(v == t ? ref_grad_target(logp[row], ref_logp[row], ar, cr)
                                          : ref_grad_other(static_cast<acc_t>(z[v]), static_cast<acc_t>(r[v]), lz,
                                                           lr, ar, cr));
    }
  }
}

}  // namespace

void UNLX_DEVICE_FN_(ref_grad)(const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& target,
                    const at::Tensor& lse, const at::Tensor& ref_lse, const at::Tensor& logp,
                    const at::Tensor& ref_logp, const at::Tensor& a, const at::Tensor& c) {
  check_ref_args(logits, ref_logits, &target,
                 {{lse, "lse"}, {ref_lse, "ref_lse"}, {logp, "logp"}, {ref_logp, "ref_logp"}, {a, "a"}, {c, "c"}});
  device::Guard guard(logits);
  if (logits.size(0) == 0) return;
  const auto t = target.contiguous(), lz = lse.contiguous(), lr = ref_lse.contiguous(), lp = logp.contiguous(),
             lpr = ref_logp.contiguous(), ac = a.contiguous(), cc = c.contiguous();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "ref_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    device::launch(ref_grad_kernel<scalar_t, acc_t>, elementwise_grid(logits.size(0), logits.size(1)), kRowThreads,
        logits.data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(),
        lz.const_data_ptr<acc_t>(), lr.const_data_ptr<acc_t>(), lp.const_data_ptr<acc_t>(),
        lpr.const_data_ptr<acc_t>(), ac.const_data_ptr<acc_t>(), cc.const_data_ptr<acc_t>(), logits.size(0),
        logits.size(1));
  });
}

}  // namespace unlearnx
