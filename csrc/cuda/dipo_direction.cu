// CUDA DiPO direction kernel: one block per reference row; a max pass, one pass for the sums
// inside and outside the top set H (entries >= threshold; without one, the row's maximum),
// then r <- g = q+ - q- in place and <g, r> out.
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
    acc_t m[1] = {-std::numeric_limits<acc_t>::infinity()};
    for (int64_t v = threadIdx.x; v < V; v += kRowThreads) m[0] = fmax(m[0], static_cast<acc_t>(r[v]));
    block_max<acc_t, kRowThreads, 1>(m);
    const acc_t tau = threshold != nullptr ? threshold[row] : m[0];
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

at::Tensor UNLX_DEVICE_FN_(dipo_direction)(const at::Tensor& ref_logits, const std::optional<at::Tensor>& threshold,
                                           double shift) {
  check_logits(ref_logits);
  if (threshold) check_row_vector(*threshold, "threshold", ref_logits);
  device::Guard guard(ref_logits);
  at::Tensor offset = acc_empty(ref_logits);
  if (ref_logits.size(0) == 0) return offset;
  const auto tau = threshold ? threshold->contiguous() : at::Tensor();
  UNLEARNX_DISPATCH_LOGITS(ref_logits.scalar_type(), "dipo_direction", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    device::launch(dipo_direction_kernel<scalar_t, acc_t>, row_blocks(ref_logits.size(0)), kRowThreads,
        ref_logits.data_ptr<scalar_t>(), tau.defined() ? tau.const_data_ptr<acc_t>() : nullptr,
        static_cast<acc_t>(shift), ref_logits.size(0), ref_logits.size(1), offset.data_ptr<acc_t>());
  });
  return offset;
}

}  // namespace unlearnx
