// CUDA gradient kernel: rewrites a chunk of logits into coef * d log p(target) / dz.
// Each thread owns its elements, so the in-place rewrite has no races.
#include "common.cuh"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    logprob_grad_kernel(scalar_t* __restrict__ z, const int64_t* __restrict__ target, const acc_t* __restrict__ lse,
                        const acc_t* __restrict__ logp, const acc_t* __restrict__ coef, int64_t rows, int64_t V) {
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    scalar_t* row = z + r * V;
    const acc_t l = lse[r], lp = logp[r], c = coef[r];
    const int64_t t = target[r];
    for (int64_t v = blockIdx.x * static_cast<int64_t>(kRowThreads) + threadIdx.x; v < V;
         v += static_cast<int64_t>(gridDim.x) * kRowThreads) {
      const acc_t zv = static_cast<acc_t>(row[v]);
      row[v] = static_cast<scalar_t>(v == t ? logprob_grad_target(lp, c) : logprob_grad_other(zv, l, c));
    }
  }
}

}  // namespace

void UNLX_DEVICE_FN_(logprob_grad)(const at::Tensor& logits, const at::Tensor& target, const at::Tensor& lse,
                        const at::Tensor& logp_target, const at::Tensor& coef) {
  check_logits_target(logits, target);
  check_row_vectors(logits, {{lse, "lse"}, {logp_target, "logp_target"}, {coef, "coef"}});
  device::Guard guard(logits);
  const int64_t rows = logits.size(0), V = logits.size(1);
  if (rows == 0) return;
  const auto target_c = target.contiguous();
  const auto lse_c = lse.contiguous();
  const auto logp_c = logp_target.contiguous();
  const auto coef_c = coef.contiguous();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "logprob_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    device::launch(logprob_grad_kernel<scalar_t, acc_t>, elementwise_grid(rows, V), kRowThreads,
        logits.data_ptr<scalar_t>(), target_c.const_data_ptr<int64_t>(), lse_c.const_data_ptr<acc_t>(),
        logp_c.const_data_ptr<acc_t>(), coef_c.const_data_ptr<acc_t>(), rows, V);
  });
}

}  // namespace unlearnx
