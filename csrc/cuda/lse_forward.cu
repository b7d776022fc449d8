// CUDA statistics kernel: one block per row, online softmax partials of the
// non-target columns per thread, merged across the block.
#include "block_reduce.cuh"
#include "common.cuh"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    lse_stats_kernel(const scalar_t* __restrict__ z, const int64_t* __restrict__ target, int64_t rows, int64_t V,
                     acc_t* __restrict__ lse, acc_t* __restrict__ logp) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* row = z + r * V;
    const int64_t t = target[r];
    CUDA_KERNEL_ASSERT(t >= 0 && t < V);
    SoftmaxPartial<acc_t> p = softmax_empty<acc_t>();
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads)
      if (v != t) p = softmax_push(p, static_cast<acc_t>(row[v]));
    p = block_merge<acc_t, kRowThreads>(p);
    if (threadIdx.x == 0) {
      const RowStats<acc_t> st = finish_row(p, static_cast<acc_t>(row[t]));
      lse[r] = st.lse;
      logp[r] = st.logp_target;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> UNLX_DEVICE_FN(lse_stats)(const at::Tensor& logits, const at::Tensor& target) {
  check_logits_target(logits, target);
  device::Guard guard(logits);
  const auto target_c = target.contiguous();
  const int64_t rows = logits.size(0), V = logits.size(1);
  at::Tensor lse = acc_empty(logits), logp = acc_empty(logits);
  if (rows == 0) return {lse, logp};
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "lse_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    device::launch(lse_stats_kernel<scalar_t, acc_t>, row_blocks(rows), kRowThreads,
        logits.const_data_ptr<scalar_t>(), target_c.const_data_ptr<int64_t>(), rows, V, lse.data_ptr<acc_t>(),
        logp.data_ptr<acc_t>());
  });
  return {lse, logp};
}

}  // namespace unlearnx
