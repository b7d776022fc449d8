// CUDA statistics of a policy row z and a reference row r: one block per row, a max pass and
// a sum pass. Not one online pass: rescaling the KL cross term as the running maxima move,
// cross' = e^(m-m') (cross - (m'-m) S), would bring back the cancellation that taking the
// maxima out of r - z removed (row_math.h; README, "GPU and the SIMT emulation").
#include <limits>

#include "block_reduce.cuh"
#include "common.cuh"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads)
    ref_stats_kernel(const scalar_t* __restrict__ zs, const scalar_t* __restrict__ rs,
                     const int64_t* __restrict__ target, int64_t rows, int64_t V, acc_t* __restrict__ lse,
                     acc_t* __restrict__ ref_lse, acc_t* __restrict__ logp, acc_t* __restrict__ ref_logp,
                     acc_t* __restrict__ kl) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const int64_t t = target[row];
    CUDA_KERNEL_ASSERT(t >= 0 && t < V);
    acc_t m[2] = {-std::numeric_limits<acc_t>::infinity(), -std::numeric_limits<acc_t>::infinity()};
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      m[0] = fmax(m[0], static_cast<acc_t>(z[v]));
      m[1] = fmax(m[1], static_cast<acc_t>(r[v]));
    }
    block_max<acc_t, kRowThreads, 2>(m);
    acc_t s[3] = {0, 0, 0};  // non-target sum-exp of z, of r, and the cross term (row_math.h)
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) {
      const acc_t zv = static_cast<acc_t>(z[v]) - m[0], rv = static_cast<acc_t>(r[v]) - m[1];
      const acc_t er = exp_acc(rv);
      if (v != t) s[0] += exp_acc(zv), s[1] += er;
      s[2] += er * (rv - zv);
    }
    block_sum<acc_t, kRowThreads, 3>(s);
    if (threadIdx.x == 0) {
      const RefRowStats<acc_t> st =
          finish_ref_row(m[0], s[0], static_cast<acc_t>(z[t]), m[1], s[1], static_cast<acc_t>(r[t]), s[2]);
      lse[row] = st.lse_z, ref_lse[row] = st.lse_r, logp[row] = st.logp, ref_logp[row] = st.logp_ref;
      kl[row] = st.kl;
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> UNLX_DEVICE_FN(ref_stats)(
    const at::Tensor& logits, const at::Tensor& ref_logits, const at::Tensor& target) {
  check_ref_args(logits, ref_logits, &target, {});
  device::Guard guard(logits);
  const auto target_c = target.contiguous();
  at::Tensor lse = acc_empty(logits), ref_lse = acc_empty(logits), logp = acc_empty(logits),
             ref_logp = acc_empty(logits), kl = acc_empty(logits);
  if (logits.size(0) == 0) return {lse, ref_lse, logp, ref_logp, kl};
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "ref_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    device::launch(ref_stats_kernel<scalar_t, acc_t>, row_blocks(logits.size(0)), kRowThreads,
        logits.const_data_ptr<scalar_t>(), ref_logits.const_data_ptr<scalar_t>(), target_c.const_data_ptr<int64_t>(),
        logits.size(0), logits.size(1), lse.data_ptr<acc_t>(), ref_lse.data_ptr<acc_t>(), logp.data_ptr<acc_t>(),
        ref_logp.data_ptr<acc_t>(), kl.data_ptr<acc_t>());
  });
  return {lse, ref_lse, logp, ref_logp, kl};
}

}  // namespace unlearnx
