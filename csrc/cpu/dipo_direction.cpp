// CPU DiPO direction kernel: rewrites each reference row r, in place, into g = q+ - q- and
// returns <g, r>, from a max pass, one pass for the sums inside and outside the top set H
// (entries >= threshold; without one, the row's maximum), and a writing pass.
#include "common.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
struct DipoDirectionRows {
  UNLX_ROWS_INLINE static void run(int64_t begin, int64_t end, scalar_t* rs, const acc_t* threshold, acc_t shift,
                                   int64_t V, acc_t* offset) {
    for (int64_t row = begin; row < end; ++row) {
      scalar_t* r = rs + row * V;
      const acc_t m = row_max<acc_t>(r, V);
      const acc_t tau = threshold != nullptr ? threshold[row] : m;
      acc_t s_out = 0, s_in = 0, b_out = 0, b_in = 0;
#pragma omp simd reduction(+ : s_out, s_in, b_out, b_in)
      for (int64_t v = 0; v < V; ++v) {
        const acc_t y = static_cast<acc_t>(r[v]) - m;
        const acc_t e = exp_acc(y);
        const bool in = static_cast<acc_t>(r[v]) >= tau;
        s_out += in ? acc_t(0) : e;
        s_in += in ? e : acc_t(0);
        b_out += in ? acc_t(0) : e * y;
        b_in += in ? e * y : acc_t(0);
      }
      offset[row] = dipo_inner(s_out, s_in, b_out, b_in, shift);
      const acc_t scale = dipo_scale(s_out, s_in, shift);
#pragma omp simd
      for (int64_t v = 0; v < V; ++v) {
        const acc_t rv = static_cast<acc_t>(r[v]);
        r[v] = static_cast<scalar_t>(dipo_direction(rv, rv >= tau, m, s_out, s_in, scale));
      }
    }
  }
};

}  // namespace

at::Tensor dipo_direction_cpu_(const at::Tensor& ref_logits, const std::optional<at::Tensor>& threshold,
                               double shift) {
  check_logits(ref_logits);
  if (threshold) check_row_vector(*threshold, "threshold", ref_logits);
  const int64_t rows = ref_logits.size(0), V = ref_logits.size(1);
  at::Tensor offset = acc_empty(ref_logits);
  const auto tau = threshold ? threshold->contiguous() : at::Tensor();
  UNLEARNX_DISPATCH_LOGITS(ref_logits.scalar_type(), "dipo_direction_cpu_", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    run_rows<DipoDirectionRows, scalar_t, acc_t>(rows, ref_logits.data_ptr<scalar_t>(),
        tau.defined() ? tau.const_data_ptr<acc_t>() : nullptr, static_cast<acc_t>(shift), V,
        offset.data_ptr<acc_t>());
  });
  return offset;
}

}  // namespace unlearnx
