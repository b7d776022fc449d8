// CUDA DiPO statistics: one block per row, one pass over the vocabulary.
#include <limits>

#include "block_reduce.cuh"
#include "common.cuh"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    dipo_stats_kernel(const scalar_t* __restrict__ zs, const scalar_t* __restrict__ rs,
                      const int64_t* __restrict__ top, int64_t k, acc_t shift, int64_t rows, int64_t V,
                      acc_t* __restrict__ ref_max, acc_t* __restrict__ s_plus, acc_t* __restrict__ s_minus,
                      acc_t* __restrict__ delta) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const int64_t* h = top + row * k;
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t j = 0; j < k; ++j) m = fmax(m, static_cast<acc_t>(r[h[j]]));
    acc_t s[2] = {0, 0};
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      const acc_t rv = static_cast<acc_t>(r[v]);
      const acc_t e = exp_acc(rv - m);
      s[0] += e;
      s[1] += e * (static_cast<acc_t>(z[v]) - rv);
    }
    block_sum<acc_t, kRowThreads, 2>(s);
    if (threadIdx.x == 0) {
      acc_t s_in = 0, a_in = 0;
      for (int64_t j = 0; j < k; ++j) {
        const acc_t rv = static_cast<acc_t>(r[h[j]]);
        const acc_t e = exp_acc(rv - m);
        s_in += e;
        a_in += e * (static_cast<acc_t>(z[h[j]]) - rv);
      }
      const DipoRowStats<acc_t> st = finish_dipo_row(s[0] - s_in, s_in, s[1] - a_in, a_in, shift);
      ref_max[row] = m, s_plus[row] = st.s_plus, s_minus[row] = st.s_minus, delta[row] = st.delta;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dipo_stats_cuda(const at::Tensor& logits,
                                                                          const at::Tensor& ref_logits,
                                                                          const at::Tensor& top_idx, double shift) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0 && logits.is_contiguous(),
                    "logits: expected a contiguous [rows, V] tensor with V > 0, got ", logits.sizes());
  check_pair(ref_logits, logits);
  check_top_idx(top_idx, logits);
  c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor ref_max = acc_empty(logits), s_plus = acc_empty(logits), s_minus = acc_empty(logits),
             delta = acc_empty(logits);
  if (logits.size(0) == 0) return {ref_max, s_plus, s_minus, delta};
  auto stream = c10::cuda::getCurrentCUDAStream();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dipo_stats_kernel<scalar_t, acc_t><<<row_blocks(logits.size(0)), kRowThreads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(), top_idx.const_data_ptr<int64_t>(),
        top_idx.size(1), static_cast<acc_t>(shift), logits.size(0), logits.size(1), ref_max.data_ptr<acc_t>(),
        s_plus.data_ptr<acc_t>(), s_minus.data_ptr<acc_t>(), delta.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {ref_max, s_plus, s_minus, delta};
}

}  // namespace unlearnx
