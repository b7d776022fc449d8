// CPU DiPO statistics: per reference row, the sums inside and outside the top set H
// (entries >= threshold) and Delta = <q+ - q-, z - r>, in one vectorised pass after the max.
#include <algorithm>
#include <limits>

#include "common.h"
#include "simd.h"
#include "unlearnx/row_math.h"

namespace unlearnx {

namespace {

template <typename scalar_t, typename acc_t>
UNLX_CPU_CLONES void dipo_rows(const scalar_t* zs, const scalar_t* rs, const acc_t* threshold, acc_t shift,
                               int64_t begin, int64_t end, int64_t V, acc_t* ref_max, acc_t* s_out_p,
                               acc_t* s_in_p, acc_t* delta) {
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* z = zs + row * V;
    const scalar_t* r = rs + row * V;
    const acc_t tau = threshold[row];
    acc_t m = -std::numeric_limits<acc_t>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < V; ++v) m = std::max(m, static_cast<acc_t>(r[v]));
    acc_t s_out = 0, s_in = 0, a_out = 0, a_in = 0;
#pragma omp simd reduction(+ : s_out, s_in, a_out, a_in)
    for (int64_t v = 0; v < V; ++v) {
      const acc_t rv = static_cast<acc_t>(r[v]);
      const acc_t e = exp_acc(rv - m);
      const acc_t a = e * (static_cast<acc_t>(z[v]) - rv);
      const bool in = rv >= tau;
      s_out += in ? acc_t(0) : e;
      s_in += in ? e : acc_t(0);
      a_out += in ? acc_t(0) : a;
      a_in += in ? a : acc_t(0);
    }
    ref_max[row] = m;
    s_out_p[row] = s_out;
    s_in_p[row] = s_in;
    delta[row] = dipo_delta(s_out, s_in, a_out, a_in, shift);
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dipo_stats_cpu(const at::Tensor& logits,
                                                                         const at::Tensor& ref_logits,
                                                                         const at::Tensor& threshold, double shift) {
  check_ref_args(logits, ref_logits, nullptr, {{threshold, "threshold"}});
  const int64_t rows = logits.size(0), V = logits.size(1);
  at::Tensor ref_max = acc_empty(logits), s_out = acc_empty(logits), s_in = acc_empty(logits),
             delta = acc_empty(logits);
  const auto tau = threshold.contiguous();
  UNLEARNX_DISPATCH_LOGITS(logits.scalar_type(), "dipo_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* z = logits.const_data_ptr<scalar_t>();
    const scalar_t* r = ref_logits.const_data_ptr<scalar_t>();
    const acc_t* t = tau.const_data_ptr<acc_t>();
    acc_t *p0 = ref_max.data_ptr<acc_t>(), *p1 = s_out.data_ptr<acc_t>(), *p2 = s_in.data_ptr<acc_t>(),
          *p3 = delta.data_ptr<acc_t>();
    for_rows(rows, [&](int64_t b, int64_t e) {
      dipo_rows<scalar_t, acc_t>(z, r, t, static_cast<acc_t>(shift), b, e, V, p0, p1, p2, p3);
    });
  });
  return {ref_max, s_out, s_in, delta};
}

}  // namespace unlearnx
